"""Tests of asr.model: length arithmetic, padding invariance, masks, loss mixing, training sanity."""

from __future__ import annotations

import warnings

import pytest
import torch

from asr.config import from_dict
from asr.errors import ConfigError
from asr.model import (
    LAS,
    ModelConfig,
    decoder_io,
    lengths_to_mask,
    output_lengths,
)
from asr.specaugment import SpecAugmentConfig
from asr.tokenizer import EOS_ID, IGNORE_ID, SOS_ID

VOCAB = 12
TINY = dict(
    n_mels=8,
    vocab_size=VOCAB,
    listener_hidden=16,
    attention_dim=12,
    attention_heads=2,
    location_channels=3,
    location_kernel=5,
    embed_dim=8,
    decoder_hidden=16,
)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bench_train():
    """scripts/bench_train.py as a module (it holds the analytic FLOP count)."""
    from conftest import load_script

    return load_script("bench_train")


def tiny_model(specaug=None, **overrides) -> LAS:
    return LAS(ModelConfig(**{**TINY, **overrides}), specaug)


def make_batch(lengths, target_lengths, n_mels=8, pad_value=100.0):
    """Random feats (B, T, n_mels) padded with ``pad_value`` and targets padded with IGNORE_ID."""
    lengths = torch.tensor(lengths)
    target_lengths = torch.tensor(target_lengths)
    feats = torch.randn(len(lengths), int(lengths.max()), n_mels)
    feats = feats.masked_fill(~lengths_to_mask(lengths)[..., None], pad_value)
    targets = torch.randint(3, VOCAB, (len(lengths), int(target_lengths.max())))
    targets = targets.masked_fill(~lengths_to_mask(target_lengths), IGNORE_ID)
    return feats, lengths, targets, target_lengths


# -- length arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize("frame_stack,pyramid", [(1, 0), (1, 1), (1, 2), (3, 1), (2, 3)])
def test_output_lengths_match_listener(frame_stack, pyramid):
    model = tiny_model(frame_stack=frame_stack, pyramid_layers=pyramid, ctc_weight=1.0).eval()
    r = frame_stack * 2**pyramid
    lengths = [1, r - 1, r, r + 1, 2 * r + 1, 3 * r - 1, 37, 64, 65]
    feats = torch.randn(len(lengths), max(lengths), 8)
    enc, enc_lengths = model.encode(feats, torch.tensor(lengths))
    expected = [max(n, r) // r for n in lengths]
    assert enc_lengths.tolist() == expected
    assert output_lengths(torch.tensor(lengths), model.cfg).tolist() == expected
    assert [output_lengths(n, model.cfg) for n in lengths] == expected
    assert enc.size(1) == max(expected)
    assert model.time_reduction == r


def test_encoder_output_is_zero_beyond_length():
    model = tiny_model(dropout=0.0).eval()
    feats, lengths, _, _ = make_batch([40, 23, 9], [2, 2, 2])
    enc, enc_lengths = model.encode(feats, lengths)
    pad = ~lengths_to_mask(enc_lengths, enc.size(1))
    assert enc[pad].abs().max() == 0
    assert enc[~pad].abs().min() > 0


# -- padding invariance --------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["location", "content", "multihead"])
def test_padding_does_not_change_outputs(attention):
    model = tiny_model(attention=attention, frame_stack=2).eval()
    feats, lengths, targets, target_lengths = make_batch([45, 30, 17, 3], [5, 3, 4, 1])
    with torch.no_grad():
        enc, enc_lengths = model.encode(feats, lengths)
        ctc = model.ctc_log_probs(enc)
        batch_loss = model(feats, lengths, targets, target_lengths).loss
        state = model.decoder.init_state(enc, enc_lengths)
        mask = lengths_to_mask(enc_lengths, enc.size(1))
        tokens = torch.full((4,), SOS_ID)
        batch_steps = []
        for t in range(3):
            log_probs, state, att = model.decoder.step(tokens, state, enc, mask)
            batch_steps.append((log_probs, att))
            tokens = targets[:, t].clamp(min=3)
        alone_losses = []
        for i in range(4):
            n, u = int(lengths[i]), int(target_lengths[i])
            e1, l1 = model.encode(feats[i : i + 1, :n], lengths[i : i + 1])
            t1 = int(l1)
            torch.testing.assert_close(e1[0], enc[i, :t1], atol=1e-5, rtol=0)
            torch.testing.assert_close(model.ctc_log_probs(e1)[0], ctc[i, :t1], atol=1e-5, rtol=0)
            alone_losses.append(
                model(
                    feats[i : i + 1, :n],
                    lengths[i : i + 1],
                    targets[i : i + 1, :u],
                    target_lengths[i : i + 1],
                ).loss
            )
            s1 = model.decoder.init_state(e1, l1)
            m1 = lengths_to_mask(l1, t1)
            tok = torch.full((1,), SOS_ID)
            for t in range(3):
                lp1, s1, a1 = model.decoder.step(tok, s1, e1, m1)
                torch.testing.assert_close(lp1[0], batch_steps[t][0][i], atol=1e-5, rtol=0)
                torch.testing.assert_close(a1[0], batch_steps[t][1][i, :t1], atol=1e-5, rtol=0)
                tok = targets[i : i + 1, t].clamp(min=3)
    torch.testing.assert_close(torch.stack(alone_losses).mean(), batch_loss, atol=1e-5, rtol=1e-6)


def test_teacher_forcing_equals_step_by_step():
    model = tiny_model(decoder_layers=2).eval()
    feats, lengths, targets, target_lengths = make_batch([33, 20], [4, 2])
    inputs, _ = decoder_io(targets, target_lengths)
    with torch.no_grad():
        enc, enc_lengths = model.encode(feats, lengths)
        logits, attention = model.decoder(enc, enc_lengths, inputs)
        state = model.decoder.init_state(enc, enc_lengths)
        mask = lengths_to_mask(enc_lengths, enc.size(1))
        for t in range(inputs.size(1)):
            log_probs, state, att = model.decoder.step(inputs[:, t], state, enc, mask)
            torch.testing.assert_close(
                log_probs, torch.log_softmax(logits[:, t], -1), atol=1e-5, rtol=0
            )
            torch.testing.assert_close(att, attention[:, t], atol=1e-6, rtol=0)


def test_decoder_gradients_match_finite_differences():
    """The decoder forms shared-operand gradients once per sequence (asr.ops.SharedOperand)."""
    cfg = ModelConfig(
        **{
            **TINY,
            "vocab_size": 5,
            "listener_hidden": 2,
            "attention_dim": 4,
            "location_channels": 2,
            "location_kernel": 3,
            "embed_dim": 3,
            "decoder_hidden": 4,
            "decoder_layers": 2,
        }
    )
    speller = LAS(cfg).decoder.double().eval()
    enc = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    enc_lengths = torch.tensor([5, 3])
    inputs = torch.tensor([[SOS_ID, 3, 4, 3], [SOS_ID, 4, 4, 3]])
    names = [
        "cells.0.weight_ih",
        "cells.0.weight_hh",
        "cells.1.weight_hh",
        "attention.query.weight",
    ]
    params = {
        name: p.detach().clone().requires_grad_()
        for name, p in speller.named_parameters()
        if name in names
    }
    weights = torch.randn(2, 4, 5, dtype=torch.float64)

    def loss(enc, *values):
        logits, _ = torch.func.functional_call(
            speller, dict(zip(params, values, strict=True)), (enc, enc_lengths, inputs)
        )
        return (logits * weights).sum()

    assert torch.autograd.gradcheck(loss, (enc, *params.values()), eps=1e-6, atol=1e-6)


def test_beam_reordering_of_state():
    model = tiny_model().eval()
    feats, lengths, _, _ = make_batch([30, 18], [1, 1])
    with torch.no_grad():
        enc, enc_lengths = model.encode(feats, lengths)
        mask = lengths_to_mask(enc_lengths, enc.size(1))
        state = model.decoder.init_state(enc, enc_lengths)
        _, state, _ = model.decoder.step(torch.tensor([5, 7]), state, enc, mask)
        idx = torch.tensor([1, 0])
        swapped = type(state)(*(t.index_select(0, idx) for t in state))
        lp_a, _, _ = model.decoder.step(torch.tensor([4, 4]), state, enc, mask)
        lp_b, _, _ = model.decoder.step(torch.tensor([4, 4]), swapped, enc[idx], mask[idx])
    torch.testing.assert_close(lp_a[idx], lp_b, atol=1e-6, rtol=0)


def test_decoding_weight_cache_follows_weight_updates():
    model = tiny_model().eval()
    feats, lengths, _, _ = make_batch([30, 18], [1, 1])
    tokens = torch.tensor([4, 5])
    with torch.no_grad():
        enc, enc_lengths = model.encode(feats, lengths)
        mask = lengths_to_mask(enc_lengths, enc.size(1))
        state = model.decoder.init_state(enc, enc_lengths)
        before, _, _ = model.decoder.step(tokens, state, enc, mask)
        model.decoder.cells[0].weight_hh.mul_(-1.0)
        model.decoder.cells[0].weight_ih.mul_(-1.0)
        after, _, _ = model.decoder.step(tokens, state, enc, mask)
        fresh = tiny_model().eval()
        fresh.load_state_dict(model.state_dict())
        expected, _, _ = fresh.decoder.step(tokens, state, enc, mask)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected)


# -- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["location", "content", "multihead"])
def test_attention_is_zero_on_padding_and_sums_to_one(attention):
    model = tiny_model(attention=attention).train()
    feats, lengths, targets, target_lengths = make_batch([48, 21, 8], [4, 6, 2])
    out = model(feats, lengths, targets, target_lengths)
    enc_lengths = output_lengths(lengths, model.cfg)
    assert out.attention.shape == (3, 7, int(enc_lengths.max()))
    pad = ~lengths_to_mask(enc_lengths)
    assert out.attention.masked_select(pad[:, None, :]).abs().max() == 0
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 7))
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("attention", ["location", "content", "multihead"])
def test_attention_equals_the_tanh_and_convolution_formula(attention):
    """The sigmoid form and the folded location matrix give Chorowski et al.'s energies exactly."""
    import torch.nn.functional as F

    model = tiny_model(attention=attention, attention_dim=16, attention_heads=4)
    att = model.decoder.attention
    heads = att.heads
    n, frames, enc_dim = 3, 11, 2 * TINY["listener_hidden"]
    enc = torch.randn(n, frames, enc_dim)
    mask = lengths_to_mask(torch.tensor([11, 7, 3]), frames)
    prev = torch.softmax(torch.randn(n, heads, frames).masked_fill(~mask[:, None], float("-inf")), -1)
    query = torch.randn(n, TINY["decoder_hidden"])
    context, weights = att(query, att.precompute(enc), enc, mask, prev)

    # Reference: channels-first energies with convolutions and tanh, as in the paper.
    energy = (att.key(enc) + att.query(query)[:, None, :]).transpose(1, 2)  # (N, A, T)
    if att.location is not None:
        energy = energy + att.location_proj(att.location(prev))
    scores = F.conv1d(torch.tanh(energy), att.score.weight, groups=heads)  # (N, H, T)
    expected = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), -1)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
    ctx = torch.bmm(expected, enc)
    expected_ctx = torch.matmul(ctx.unsqueeze(2), att.value).flatten(1) if heads > 1 else ctx.squeeze(1)
    torch.testing.assert_close(context, expected_ctx, rtol=1e-5, atol=1e-6)


def test_decoder_io_places_sos_and_eos():
    targets = torch.tensor([[5, 6, 7], [8, IGNORE_ID, IGNORE_ID]])
    inputs, outputs = decoder_io(targets, torch.tensor([3, 1]))
    assert inputs.tolist() == [[SOS_ID, 5, 6, 7], [SOS_ID, 8, EOS_ID, EOS_ID]]
    assert outputs.tolist() == [[5, 6, 7, EOS_ID], [8, EOS_ID, IGNORE_ID, IGNORE_ID]]


# -- losses --------------------------------------------------------------------------------------


def test_ctc_weight_mixes_the_losses():
    batch = make_batch([40, 25], [5, 3])
    mixed = tiny_model(ctc_weight=0.3, dropout=0.0, decoder_dropout=0.0)
    out = mixed(*batch)
    torch.testing.assert_close(out.loss, 0.3 * out.ctc_loss + 0.7 * out.att_loss)
    assert out.n_tokens == 5 + 3 + 2
    assert 0 <= out.n_correct <= out.n_tokens

    pure_las = tiny_model(ctc_weight=0.0)
    assert pure_las.ctc is None
    out = pure_las(*batch)
    assert out.ctc_loss.item() == 0 and out.loss.item() == out.att_loss.item() > 0
    with pytest.raises(RuntimeError):
        pure_las.ctc_log_probs(torch.zeros(1, 3, 32))

    pure_ctc = tiny_model(ctc_weight=1.0)
    assert pure_ctc.decoder is None
    out = pure_ctc(*batch)
    assert out.attention is None
    assert out.att_loss.item() == 0 and out.loss.item() == out.ctc_loss.item() > 0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pure_ctc.parameters())


def test_gradients_reach_every_parameter():
    model = tiny_model(decoder_layers=2, listener_layers=2)
    out = model(*make_batch([40, 25, 12], [5, 3, 2]))
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_scheduled_sampling_feeds_back_predictions_in_training_only():
    batch = make_batch([40, 25], [6, 4])
    base = tiny_model(dropout=0.0, decoder_dropout=0.0)
    sampled = tiny_model(dropout=0.0, decoder_dropout=0.0, sampling_prob=1.0)
    sampled.load_state_dict(base.state_dict())
    loss_tf = base(*batch).loss
    loss_ss = sampled(*batch).loss
    assert not torch.allclose(loss_tf, loss_ss)
    loss_ss.backward()
    assert sampled.decoder.embed.weight.grad.abs().sum() > 0
    base.eval(), sampled.eval()
    torch.testing.assert_close(base(*batch).loss, sampled(*batch).loss)


def test_cmvn_normalises_the_input():
    feats, lengths, targets, target_lengths = make_batch([30, 20], [3, 2], pad_value=0.0)
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    plain = tiny_model().eval()
    normed = tiny_model().eval()
    normed.load_state_dict(plain.state_dict())
    normed.set_cmvn(mean, std)
    with torch.no_grad():
        a, _ = normed.encode(feats * std + mean, lengths)
        b, _ = plain.encode(feats, lengths)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        normed.set_cmvn(torch.zeros(3), torch.ones(3))


def test_specaugment_only_in_training():
    model = tiny_model(SpecAugmentConfig(policy="LD"), dropout=0.0)
    feats, lengths, _, _ = make_batch([400, 300], [1, 1], pad_value=0.0)
    with torch.no_grad():
        first, _ = model.encode(feats, lengths)
        second, _ = model.encode(feats, lengths)
        assert not torch.allclose(first, second)
        model.eval()
        torch.testing.assert_close(model.encode(feats, lengths)[0], model.encode(feats, lengths)[0])


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        dict(vocab_size=3),
        dict(frame_stack=0),
        dict(listener_layers=0, pyramid_layers=0),
        dict(dropout=1.0),
        dict(attention="dot"),
        dict(location_kernel=4),
        dict(attention="multihead", attention_heads=3, attention_dim=128),
        dict(ctc_weight=1.5),
        dict(label_smoothing=-0.1),
        dict(sampling_prob=2.0),
        dict(decoder_layers=0),
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)
    with pytest.raises(ConfigError) as info:
        from_dict(ModelConfig, bad, "conf.yaml [model]")
    assert "conf.yaml [model]" in str(info.value)


def test_specaug_policy_is_one_setting_and_old_configs_still_load():
    from asr.config import ExperimentConfig

    cfg = ExperimentConfig.from_sections({})
    assert cfg.specaug.policy == "SM"  # the one default
    assert not hasattr(cfg.model, "specaug_policy")
    # A config or checkpoint from before the key moved: model.specaug_policy becomes specaug.policy.
    old = ExperimentConfig.from_sections({"model": {"specaug_policy": "none"}, "specaug": {"freq_mask_width": 5}})
    assert old.specaug.policy == "none" and old.specaug.freq_mask_width == 5
    with pytest.raises(ConfigError, match="contradicts"):
        ExperimentConfig.from_sections({"model": {"specaug_policy": "LD"}, "specaug": {"policy": "SM"}})
    with pytest.raises(ConfigError, match="specaug"):
        ExperimentConfig.from_sections({"specaug": {"policy": ""}})
    assert tiny_model(SpecAugmentConfig(policy="none")).specaug is None
    assert tiny_model(SpecAugmentConfig(policy="LD")).specaug is not None


def test_model_needs_a_vocabulary():
    ModelConfig()  # vocab_size 0 means "not set yet" and is a valid config
    with pytest.raises(ValueError, match="vocab_size"):
        LAS(ModelConfig())


# -- FLOPs and training sanity -------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["location", "multihead"])
def test_count_flops_matches_measured_matmuls(attention):
    """The benchmark's analytic FLOP count (scripts/bench_train.py) against torch's FLOP counter."""
    from torch.utils import flop_counter

    count_flops = _bench_train().count_flops
    cfg = ModelConfig(
        **{**TINY, "attention": attention, "listener_hidden": 32, "decoder_hidden": 32}
    )
    model = LAS(cfg).eval()  # eval: no dropout; the counted work is the same
    batch = make_batch([60, 44], [7, 4])
    counter = flop_counter.FlopCounterMode(display=False)
    # The counter cannot see inside oneDNN's fused LSTM; without oneDNN the LSTMs run as plain matmuls.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a oneDNN TF32 notice about Intel GPUs
        with torch.backends.mkldnn.flags(enabled=False), counter:
            model(*batch).loss.backward()
    measured = counter.get_total_flops()
    # Padded steps are computed too, so count the batch as two utterances of the longest lengths.
    predicted = count_flops(cfg, [60, 60], [7, 7])
    assert 0.9 < measured / predicted < 1.1
    assert count_flops(cfg, [60, 44], [7, 4]) == count_flops(cfg, 60, 7) + count_flops(cfg, 44, 4)


def test_overfits_one_batch():
    model = tiny_model(dropout=0.0, decoder_dropout=0.0, label_smoothing=0.0, pyramid_layers=1)
    batch = make_batch([30, 24, 18], [5, 4, 3], pad_value=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        out = model(*batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    assert out.loss.item() < 0.1 * first
    assert out.n_correct == out.n_tokens


def test_utterance_cmn_ignores_padding_and_a_constant_offset():
    model = tiny_model(utterance_cmn=True, frame_stack=2).eval()
    feats, lengths, _, _ = make_batch([45, 30, 17], [2, 2, 2])
    with torch.no_grad():
        enc, enc_lengths = model.encode(feats, lengths)
        # A fixed spectral tilt (a per-bin offset, like a different microphone) changes nothing.
        shifted, _ = model.encode(feats + torch.linspace(-3, 3, feats.size(2)), lengths)
        for i in range(3):
            n, t1 = int(lengths[i]), int(enc_lengths[i])
            alone, _ = model.encode(feats[i : i + 1, :n], lengths[i : i + 1])
            torch.testing.assert_close(alone[0], enc[i, :t1], atol=1e-5, rtol=0)
            torch.testing.assert_close(shifted[i, :t1], enc[i, :t1], atol=1e-4, rtol=0)
    plain = tiny_model(frame_stack=2).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        moved, _ = plain.encode(feats + 3.0, lengths)
        base, _ = plain.encode(feats, lengths)
    assert not torch.allclose(moved, base, atol=1e-3)  # without CMN the offset does matter
