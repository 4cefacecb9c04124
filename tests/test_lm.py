"""LSTM LM: training lowers perplexity, stepping equals teacher forcing, folders round-trip, fusion works."""

from __future__ import annotations

import random

import pytest
import torch

from asr.config import replace
from asr.decoding import DecodeOptions, search
from asr.errors import CheckpointError
from asr.lm import LSTMLM, LMConfig, load_lm, perplexity, train_lm
from asr.model import LAS, ModelConfig
from asr.tokenizer import SOS_ID, Tokenizer

WORDS = ["yes", "no", "up", "down", "left", "right", "stop", "go"]
SMALL = LMConfig(embed_dim=24, hidden=48, epochs=6, batch_size=16, lr=0.01, dropout=0.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    rng = random.Random(0)
    texts = WORDS + [" ".join(rng.choice(WORDS) for _ in range(3)) for _ in range(50)]
    return Tokenizer.train(texts, tmp_path_factory.mktemp("tok") / "tok", vocab_size=24)


@pytest.fixture(scope="module")
def trained(tokenizer, tmp_path_factory):
    """An LM trained on one fixed phrase pattern: "go left" then a random word."""
    rng = random.Random(1)
    texts = [f"go left {rng.choice(WORDS)}" for _ in range(80)]
    out = tmp_path_factory.mktemp("lm")
    summary = train_lm(texts, tokenizer, out, SMALL)
    return out, texts, summary


def test_training_lowers_perplexity_on_its_own_text(trained, tokenizer):
    out, texts, summary = trained
    lm, _ = load_lm(out)
    seqs = [tokenizer.encode(t) for t in texts]
    torch.manual_seed(0)
    untrained = LSTMLM(LMConfig(**{**SMALL.__dict__, "vocab_size": tokenizer.vocab_size})).eval()
    before, after = perplexity(untrained, seqs), perplexity(lm, seqs)
    assert after < 0.5 * before
    assert summary["valid_perplexity"] == pytest.approx(after, rel=1e-4)
    # The pattern it saw is far more likely than the same words shuffled.
    assert lm.score_text("go left stop", tokenizer) > lm.score_text("left stop go", tokenizer) + 2.0


def test_step_with_reordered_state_equals_teacher_forcing(tokenizer):
    torch.manual_seed(0)
    lm = LSTMLM(LMConfig(vocab_size=tokenizer.vocab_size, embed_dim=8, hidden=16, layers=2, dropout=0.0)).eval()
    seqs = torch.randint(3, tokenizer.vocab_size, (3, 5))
    inputs = torch.cat([torch.full((3, 1), SOS_ID), seqs], 1)
    with torch.no_grad():
        full = torch.log_softmax(lm(inputs)[0], -1)
        # Feed the rows in a permuted order and swap them back through the state, as a beam does.
        perm = torch.tensor([2, 0, 1])
        state = lm.init_state(3)
        for t in range(inputs.size(1)):
            logp, state = lm.step(inputs[perm, t], state)
            torch.testing.assert_close(logp, full[perm, t], atol=1e-5, rtol=1e-5)
            inv = torch.argsort(perm)
            state = type(state)(*(s.index_select(0, inv) for s in state))
            perm = torch.roll(perm, 1)
            state = type(state)(*(s.index_select(0, perm) for s in state))


def test_corrupt_lm_folder_is_refused(trained, tmp_path):
    import shutil

    out, _, _ = trained
    copy = tmp_path / "lm"
    shutil.copytree(out, copy)
    data = bytearray((copy / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_lm(copy)
    with pytest.raises(CheckpointError, match="not found"):
        load_lm(tmp_path / "missing")


def test_fusion_with_a_large_weight_pulls_hypotheses_towards_the_lm(trained, tokenizer):
    """Against the same search without the LM: fusion changes the best hypothesis, raises its LM score,
    and its score is exactly the fused sum of its parts."""
    out, _, _ = trained
    lm, _ = load_lm(out)
    torch.manual_seed(3)
    cfg = ModelConfig(n_mels=16, vocab_size=tokenizer.vocab_size, listener_hidden=16, pyramid_layers=2,
                      attention_dim=16, embed_dim=8, decoder_hidden=16, dropout=0.0, decoder_dropout=0.0)
    model = LAS(cfg).eval()
    with torch.no_grad():
        enc, lens = model.encode(torch.randn(2, 60, 16), torch.tensor([60, 52]))
    # No guards: a guard's cut tail would leave LM terms of tokens that are not in the hypothesis.
    options = DecodeOptions(beam_size=4, ctc_weight=0.0, lm_weight=3.0, max_ngram_repeats=0, attention_stall_steps=0)
    plain = search(model, enc, lens, options)  # no LM given: the weight is unused
    assert plain == search(model, enc, lens, replace(options, lm_weight=0.0), lm=lm)  # weight 0: no fusion
    fused = search(model, enc, lens, options, lm=lm)
    for p, f in zip(plain, fused):
        assert p[0].lm_score == 0 and f[0].lm_score < 0
        assert f[0].tokens != p[0].tokens
        lm_p, lm_f = lm.score_tokens([p[0].tokens, f[0].tokens])
        assert lm_f > lm_p
        # Without length terms the fused score is log p_att + lm_weight * log p_lm of the hypothesis.
        assert f[0].score == pytest.approx(f[0].log_prob + 3.0 * f[0].lm_score, abs=1e-4)
        assert f[0].lm_score == pytest.approx(float(lm_f), abs=1e-3)
