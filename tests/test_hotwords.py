"""Hotwords: the context trie's bonus and withdrawal, the hotwords file, and biasing in the real search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr.context import ROOT, ContextGraph, Hotword, parse_hotwords, read_hotwords
from asr.errors import ConfigError


def test_trie_adds_per_token_and_keeps_completed_phrases():
    g = ContextGraph([[5, 6, 7]], [1.0], vocab_size=20)
    assert g.walk([5]) == (g.walk([5])[0], 1.0)
    assert g.walk([5, 6, 7]) == (ROOT, 3.0)  # completed: back at the root, bonus kept
    assert g.walk([5, 6, 7, 9, 2]) == (ROOT, 3.0)  # later tokens take nothing back
    assert g.walk([5, 6, 7, 5, 6, 7]) == (ROOT, 6.0)  # a phrase may follow another


def test_trie_withdraws_a_failed_partial_match():
    g = ContextGraph([[5, 6, 7]], [1.0], vocab_size=20)
    state, total = g.walk([5, 6, 9])
    assert state == ROOT and total == 0.0
    assert g.walk([5, 6, 2])[1] == 0.0  # EOS in the middle of a phrase withdraws it too
    # A failing token may itself start the phrase again: 5 6 | 5 6 7.
    assert g.walk([5, 6, 5, 6, 7]) == (ROOT, 3.0)
    assert g.walk([1, 5, 1, 5, 6]) == (g.walk([5, 6])[0], 2.0)


def test_trie_shared_prefixes_and_nested_phrases():
    g = ContextGraph([[5, 6, 7], [5, 8], [5, 6]], [1.0, 2.0, 1.0], vocab_size=20)
    assert g.walk([5, 8])[1] == 4.0  # the shared first piece takes the larger weight
    assert g.walk([5, 6])[1] == 3.0  # [5 6] is itself a phrase ...
    assert g.walk([5, 6, 9])[1] == 3.0  # ... so failing after it keeps its bonus
    assert g.walk([5, 6, 7])[1] == 4.0


def test_trie_tables_match_walk_for_batches():
    g = ContextGraph([[3, 4, 5], [4, 4]], [1.5, 0.5], vocab_size=10)
    seqs = np.random.default_rng(0).integers(3, 6, (32, 12))
    state, total = g.init_state(32), np.zeros(32)
    rows = np.arange(32)
    for t in range(seqs.shape[1]):
        total += g.scores(state)[rows, seqs[:, t]]
        state = g.advance(state, seqs[:, t])
    for i in range(32):
        s, tot = g.walk(seqs[i].tolist())
        assert int(state[i]) == s and float(total[i]) == pytest.approx(tot)


def test_hotwords_file_parsing(tmp_path):
    words = parse_hotwords("# names\nNEW YORK :3\n\nzebra\tWEIGHT\nparis\t2.5\nlondon")
    assert words[0] == Hotword("NEW YORK", 3.0)
    assert words[1].phrase == "zebra\tWEIGHT" and words[1].weight == 1.5
    assert words[2] == Hotword("paris", 2.5) and words[3].phrase == "london"
    with pytest.raises(ConfigError, match="hot.txt:1"):
        parse_hotwords("x :-1", "hot.txt")
    with pytest.raises(ConfigError, match="no hotword"):
        (tmp_path / "empty.txt").write_text("# nothing\n")
        read_hotwords(tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match="cannot read"):
        read_hotwords(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------
# In the real search on the tiny model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded(tiny_model_dir, tiny_corpus):
    import asr
    from asr.audio import load_audio

    rec = asr.load_model(tiny_model_dir)
    utt = tiny_corpus.utts[0]
    wave = torch.from_numpy(load_audio(utt.audio, rec.sample_rate))[None]
    enc, lens = rec.encode(wave, torch.tensor([wave.size(1)]))
    return rec, enc, lens, utt


def _best(rec, enc, lens, options, context=None):
    return rec.decode(enc, lens, options, context=context)[0][0]


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_boosting_the_hypothesis_raises_its_score_by_weight_per_token(encoded, ctc_weight):
    from asr.decoding import DecodeOptions

    rec, enc, lens, _ = encoded
    options = DecodeOptions(beam_size=4, ctc_weight=ctc_weight)
    plain = _best(rec, enc, lens, options)
    g = ContextGraph([plain.tokens], [0.7], rec.tokenizer.vocab_size)
    boosted = _best(rec, enc, lens, options, g)
    assert boosted.tokens == plain.tokens
    assert boosted.score == pytest.approx(plain.score + 0.7 * len(plain.tokens), abs=1e-4)


def test_a_boosted_alternative_becomes_the_hypothesis(encoded):
    """Boosting the runner-up by more than its gap per token makes it (or a hypothesis holding it) win."""
    from asr.decoding import DecodeOptions

    rec, enc, lens, _ = encoded
    options = DecodeOptions(beam_size=4, ctc_weight=0.3, nbest=4)
    nbest = rec.decode(enc, lens, options)[0]
    best = nbest[0]
    alt = next(h for h in nbest[1:] if h.tokens and h.tokens != best.tokens)
    weight = (best.score - alt.score) / len(alt.tokens) + 0.5
    g = ContextGraph([alt.tokens], [weight], rec.tokenizer.vocab_size)
    biased = rec.decode(enc, lens, options, context=g)[0][0]
    n = len(alt.tokens)
    assert any(biased.tokens[i : i + n] == alt.tokens for i in range(len(biased.tokens) - n + 1))
    assert biased.score >= alt.score + weight * n - 1e-4 > best.score


def test_a_failed_partial_match_leaves_the_score_unchanged(encoded):
    from asr.decoding import DecodeOptions

    rec, enc, lens, _ = encoded
    options = DecodeOptions(beam_size=4, ctc_weight=0.3)
    plain = _best(rec, enc, lens, options)
    # A phrase that starts like the hypothesis and then asks for a token the model does not want.
    wrong = next(t for t in range(4, rec.tokenizer.vocab_size) if t not in plain.tokens)
    g = ContextGraph([plain.tokens[:1] + [wrong, wrong]], [0.2], rec.tokenizer.vocab_size)
    biased = _best(rec, enc, lens, options, g)
    assert biased.tokens == plain.tokens
    assert biased.score == pytest.approx(plain.score, abs=1e-4)


def test_hotwords_force_beam_search(encoded):
    from asr.decoding import DecodeOptions, uses_greedy

    options = DecodeOptions(beam_size=1, ctc_weight=0.0)
    rec, enc, lens, _ = encoded
    g = ContextGraph([[4]], [1.0], rec.tokenizer.vocab_size)
    assert uses_greedy(options) and not uses_greedy(options, context=g)
    assert _best(rec, enc, lens, options, g).tokens
