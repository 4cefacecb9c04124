"""Search invariants on real (small, randomly initialised or hand-weighted) LAS models."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asr.align import ctc_greedy
from asr.decoding import (
    CTCPrefixScorer,
    DecodeOptions,
    beam_search,
    ctc_beam_search,
    greedy_search,
    search,
    uses_greedy,
)
from asr.model import LAS, ModelConfig
from asr.tokenizer import BLANK_ID, EOS_ID

VOCAB = 12
NO_GUARDS = dict(max_ngram_repeats=0, attention_stall_steps=0, attention_backtrack=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (and stalls on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_las(seed: int, vocab: int = VOCAB, ctc_weight: float = 0.3) -> LAS:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_mels=16, vocab_size=vocab, listener_hidden=24, pyramid_layers=2, attention_dim=24,
                      location_channels=4, location_kernel=5, embed_dim=16, decoder_hidden=32, dropout=0.0,
                      decoder_dropout=0.0, ctc_weight=ctc_weight)
    return LAS(cfg).eval()


def encoded(model: LAS, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), model.cfg.n_mels, generator=g)
    with torch.no_grad():
        return model.encode(feats, torch.tensor(lengths))


def exact_ctc_logprob(log_probs: torch.Tensor, length: int, tokens: list[int]) -> float:
    """log p(tokens | x) summed over all alignments, by torch's CTC loss."""
    target = torch.tensor([tokens], dtype=torch.long) if tokens else torch.zeros(1, 0, dtype=torch.long)
    loss = F.ctc_loss(log_probs[None, :length].transpose(0, 1).double(), target, torch.tensor([length]),
                      torch.tensor([len(tokens)]), blank=BLANK_ID, reduction="sum")
    return -float(loss)


@pytest.mark.parametrize("guards", [NO_GUARDS, {}])
def test_beam_one_equals_greedy(guards):
    model = small_las(0)
    enc, lens = encoded(model, [64, 48, 23])
    options = DecodeOptions(beam_size=1, ctc_weight=0.0, max_len_ratio=0.8, **guards)
    greedy = greedy_search(model, enc, lens, options)
    beam = beam_search(model, enc, lens, options)
    assert len(greedy) == len(beam) == 3
    for g, b in zip(greedy, beam):
        assert b[0].tokens == g.tokens
        assert b[0].score == pytest.approx(g.score, abs=1e-4)
        assert b[0].stopped_by == g.stopped_by
    if not guards:
        # Random weights loop; this case must exercise a guard, or it would test nothing new.
        assert any(g.stopped_by != "eos" for g in greedy)


@pytest.mark.parametrize("ctc_weight", [0.0, 0.5])
def test_wider_beam_never_finds_a_worse_best_score(ctc_weight):
    model = small_las(3)
    enc, lens = encoded(model, [40, 32], seed=1)
    best = {}
    for k in (1, 2, 4, 8):
        options = DecodeOptions(beam_size=k, ctc_weight=ctc_weight, eos_threshold=0.0, **NO_GUARDS)
        best[k] = [nb[0].score for nb in beam_search(model, enc, lens, options)]
    for small, large in [(1, 2), (2, 4), (4, 8)]:
        for a, b in zip(best[small], best[large]):
            assert b >= a - 1e-6, best


def test_batched_beam_search_ignores_padding():
    model = small_las(1)
    enc, lens = encoded(model, [60, 37, 18], seed=2)
    options = DecodeOptions(beam_size=4, ctc_weight=0.4, nbest=2)
    together = beam_search(model, enc, lens, options)
    for i in range(3):
        alone = beam_search(model, enc[i : i + 1, : lens[i]], lens[i : i + 1], options)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[i]], abs=1e-4)


def _hand_distribution() -> tuple[torch.Tensor, torch.Tensor]:
    """Two utterances (T' = 2 and 3 frames, V = 5) with known answers.

    Utterance 0: both frames are blank 0.6 / token 3 0.4. The best path is blank-blank (0.36, empty
    output) but the labelling "3" collects 0.4*0.4 + 2*0.6*0.4 = 0.64. Utterance 1: a clear "4 3".
    The third frame of utterance 0 is padding and holds a misleading spike that must be ignored.
    """
    p = torch.full((2, 3, 5), 1e-6)
    p[0, :2, BLANK_ID], p[0, :2, 3] = 0.6, 0.4
    p[0, 2, 4] = 1.0
    p[1, 0, 4], p[1, 1, BLANK_ID], p[1, 2, 3] = 0.9, 0.6, 0.8
    p[1, 0, BLANK_ID], p[1, 1, 4], p[1, 2, BLANK_ID] = 0.1, 0.4, 0.2
    p = p / p.sum(-1, keepdim=True)
    return p.log(), torch.tensor([2, 3])


def _best_labelling(log_probs: torch.Tensor, length: int) -> tuple[list[int], float]:
    """The most likely labelling by brute force over every label sequence that fits ``length`` frames."""
    labels = [c for c in range(log_probs.size(-1)) if c not in (BLANK_ID, EOS_ID)]
    seqs = [list(s) for n in range(length + 1) for s in itertools.product(labels, repeat=n)]
    scored = [(exact_ctc_logprob(log_probs, length, s), s) for s in seqs]
    score, best = max((x for x in scored if x[0] > -math.inf), key=lambda x: x[0])
    return best, score


def test_pure_ctc_beam_search_finds_the_most_likely_labelling_on_hand_distribution():
    log_probs, lengths = _hand_distribution()
    assert ctc_greedy(log_probs, lengths)[0] == []  # the trap: best path says "nothing"
    options = DecodeOptions(beam_size=8, ctc_weight=1.0, max_len_ratio=1.0, **NO_GUARDS)
    ours = ctc_beam_search(log_probs, lengths, options)
    for b in range(2):
        best, best_score = _best_labelling(log_probs[b], int(lengths[b]))
        assert ours[b][0].tokens == best
        assert ours[b][0].score == pytest.approx(best_score, abs=1e-5)
    assert ours[0][0].tokens == [3] and ours[1][0].tokens == [4, 3]


def test_beam_search_with_ctc_weight_one_uses_the_models_ctc_head():
    log_probs, lengths = _hand_distribution()
    model = small_las(2, vocab=5, ctc_weight=0.5)
    enc_dim = model.ctc.in_features
    with torch.no_grad():
        # The CTC head becomes the identity on the first V encoder dims, so log_softmax(enc) = log p.
        model.ctc.weight.zero_()
        model.ctc.weight[:, :5] = torch.eye(5)
        model.ctc.bias.zero_()
    enc = torch.zeros(2, 3, enc_dim)
    enc[:, :, :5] = log_probs
    options = DecodeOptions(beam_size=8, ctc_weight=1.0, **NO_GUARDS)
    ours = beam_search(model, enc, lengths, options)
    assert [h[0].tokens for h in ours] == [_best_labelling(log_probs[b], int(lengths[b]))[0] for b in range(2)]


def test_ctc_prefix_scores_are_exact_on_random_posteriors():
    torch.manual_seed(5)
    log_probs = torch.log_softmax(2 * torch.randn(3, 9, 6), dim=-1)
    lengths = torch.tensor([9, 6, 4])
    options = DecodeOptions(beam_size=6, ctc_weight=1.0, nbest=3, **NO_GUARDS)
    for b, nbest in enumerate(ctc_beam_search(log_probs, lengths, options)):
        assert len(nbest) == 3
        for hyp in nbest:
            assert EOS_ID not in hyp.tokens
            assert hyp.score == pytest.approx(exact_ctc_logprob(log_probs[b], int(lengths[b]), hyp.tokens), abs=1e-4)


def test_prefix_scorer_prefix_probability_bounds_full_probability():
    torch.manual_seed(6)
    log_probs = torch.log_softmax(torch.randn(2, 7, 5), dim=-1)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([7, 5]))
    cands = torch.tensor([[3, 4, EOS_ID], [4, 3, EOS_ID]])
    psi, _ = scorer.extend(cands)
    assert (psi <= 1e-9).all()
    # The prefix "3" includes every labelling that starts with 3, so it bounds the labelling "3".
    full = exact_ctc_logprob(log_probs[0], 7, [3])
    assert psi[0, 0] >= full - 1e-6
    assert psi[0, 2] == pytest.approx(exact_ctc_logprob(log_probs[0], 7, []), abs=1e-5)


def _dominated_by(model: LAS, token: int) -> LAS:
    with torch.no_grad():
        model.decoder.output.bias[token] = 50.0
    return model


def test_loop_guard_stops_a_model_that_repeats_one_token():
    model = _dominated_by(small_las(4), 7)
    enc, lens = encoded(model, [80, 64])
    guarded = DecodeOptions(beam_size=1, ctc_weight=0.0, max_ngram_repeats=3, ngram_size=2, attention_stall_steps=0)
    for hyp in greedy_search(model, enc, lens, guarded):
        assert hyp.stopped_by == "ngram_repeat" and hyp.guards["ngram_repeat"] == 1
        assert hyp.tokens == [7]  # the loop's copies are cut
    for nbest in beam_search(model, enc, lens, DecodeOptions(beam_size=4, ctc_weight=0.0, max_ngram_repeats=3)):
        assert nbest[0].guards["ngram_repeat"] >= 1
        assert len(nbest[0].tokens) <= 3
    unguarded = DecodeOptions(beam_size=1, ctc_weight=0.0, max_len_ratio=0.5, **NO_GUARDS)
    for hyp, n in zip(greedy_search(model, enc, lens, unguarded), lens.tolist()):
        assert hyp.stopped_by == "max_len" and len(hyp.tokens) == math.ceil(0.5 * n)


def test_attention_stall_guard_fires_when_attention_never_moves():
    model = small_las(5)
    with torch.no_grad():
        # Zero energies give uniform attention, whose peak (argmax) stays on frame 0.
        score = model.decoder.attention.score
        (score.weight if isinstance(score, torch.nn.Module) else score).zero_()
    enc, lens = encoded(model, [80])
    options = DecodeOptions(beam_size=1, ctc_weight=0.0, eos_threshold=0.0, min_len_ratio=1.0,
                            max_ngram_repeats=0, attention_stall_steps=5)
    hyp = greedy_search(model, enc, lens, options)[0]
    assert hyp.stopped_by == "attention_stall" and hyp.guards["attention_stall"] == 1
    assert len(hyp.tokens) == 1  # the tokens emitted while stalled are cut


def test_min_and_max_length_are_respected():
    model = small_las(6)
    enc, lens = encoded(model, [64, 32])
    assert lens.tolist() == [16, 8]
    for ratio in (0.25, 0.5):
        options = DecodeOptions(beam_size=3, ctc_weight=0.0, min_len_ratio=ratio, max_len_ratio=ratio, **NO_GUARDS)
        for nbest, n in zip(beam_search(model, enc, lens, options), lens.tolist()):
            assert len(nbest[0].tokens) == int(ratio * n)


def test_options_are_validated():
    with pytest.raises(ValueError):
        DecodeOptions(beam_size=2, nbest=3)
    with pytest.raises(ValueError):
        DecodeOptions(ctc_weight=1.5)


def test_attention_is_kept_per_hypothesis_when_asked():
    model = small_las(7)
    enc, lens = encoded(model, [48, 24])
    options = DecodeOptions(beam_size=3, ctc_weight=0.3, keep_attention=True, **NO_GUARDS)
    for nbest, n in zip(beam_search(model, enc, lens, options), lens.tolist()):
        hyp = nbest[0]
        assert hyp.attention.shape == (len(hyp.tokens) + 1, enc.size(1))
        assert np.allclose(hyp.attention.sum(1), np.ones(len(hyp.tokens) + 1), atol=1e-5)
        assert float(np.abs(hyp.attention[:, n:]).sum()) == 0.0  # nothing on padding frames
    greedy = greedy_search(model, enc, lens, options)[0]
    assert greedy.attention.shape == (len(greedy.tokens) + 1, enc.size(1))


def test_search_is_greedy_only_for_beam_one_without_ctc_or_lm():
    model = small_las(8)
    enc, lens = encoded(model, [48, 30], seed=3)
    greedy = DecodeOptions(beam_size=1, ctc_weight=0.0)
    assert uses_greedy(greedy) and not uses_greedy(DecodeOptions(beam_size=1)) and not uses_greedy(DecodeOptions())
    assert not uses_greedy(greedy, lm=object()) and uses_greedy(DecodeOptions(beam_size=1, ctc_weight=0.0,
                                                                              lm_weight=0.0), lm=object())
    assert [nb[0].tokens for nb in search(model, enc, lens, greedy)] == [h.tokens for h in
                                                                        greedy_search(model, enc, lens, greedy)]
    # Beam 1 with CTC is a beam search of one that scores with CTC: its scores carry a CTC part.
    with_ctc = DecodeOptions(beam_size=1, ctc_weight=0.5)
    ours = search(model, enc, lens, with_ctc)
    assert [[h.tokens for h in nb] for nb in ours] == [[h.tokens for h in nb]
                                                       for nb in beam_search(model, enc, lens, with_ctc)]
    assert all(nb[0].ctc_score < 0 for nb in ours)
    assert all(h.ctc_score == 0 for h in greedy_search(model, enc, lens, greedy))


def test_nbest_comes_back_best_first_and_distinct():
    model = small_las(9)
    enc, lens = encoded(model, [40, 28], seed=4)
    for nbest in search(model, enc, lens, DecodeOptions(beam_size=5, nbest=4, **NO_GUARDS)):
        assert len(nbest) == 4
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in nbest}) == 4
