"""Each CPU speed form in asr.ops against its plain reference form: forward and gradients."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from asr import ops


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _grads(outputs: torch.Tensor, inputs) -> list[torch.Tensor]:
    weights = torch.randn(outputs.shape, dtype=outputs.dtype, generator=torch.Generator().manual_seed(1))
    return list(torch.autograd.grad((outputs * weights).sum(), inputs))


# -- sigmoid scores ------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [1, 4])
def test_sigmoid_scores_equal_tanh_scores_up_to_a_per_head_constant(heads):
    energy = torch.randn(3, 7, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(heads, 8 // heads, dtype=torch.float64, requires_grad=True)
    fast = ops.sigmoid_scores(2 * energy, w)
    ref = ops.tanh_scores_reference(energy, w)
    assert fast.shape == ref.shape == (3, heads, 7)
    torch.testing.assert_close(fast - ref, w.sum(-1)[None, :, None].expand_as(ref))
    # Through the softmax over frames the constant vanishes: equal values and gradients.
    fast_p, ref_p = torch.softmax(fast, -1), torch.softmax(ref, -1)
    torch.testing.assert_close(fast_p, ref_p)
    for a, b in zip(_grads(fast_p, (energy, w)), _grads(ref_p, (energy, w)), strict=True):
        torch.testing.assert_close(a, b)


# -- folded location matrix -----------------------------------------------------------------------


@pytest.mark.parametrize("heads", [1, 2])
def test_folded_location_features_equal_convolution_then_projection(heads):
    kernel, channels, dim = 5, 3, 8
    conv = nn.Conv1d(heads, heads * channels, kernel, padding=kernel // 2, groups=heads, bias=False).double()
    proj = nn.Conv1d(heads * channels, dim, 1, groups=heads, bias=False).double()
    prev = torch.softmax(torch.randn(2, heads, 11, dtype=torch.float64), -1).requires_grad_()
    fast = ops.location_features(prev, ops.folded_location_matrix(conv.weight, proj.weight, heads))
    ref = ops.location_features_reference(prev, conv, proj)
    assert fast.shape == ref.shape == (2, 11, dim)
    torch.testing.assert_close(fast, ref)
    inputs = (prev, conv.weight, proj.weight)
    for a, b in zip(_grads(fast, inputs), _grads(ref, inputs), strict=True):
        torch.testing.assert_close(a, b)
    scaled = ops.folded_location_matrix(conv.weight, proj.weight, heads, 2.0)
    torch.testing.assert_close(ops.location_features(prev, scaled), 2 * ref)


# -- shared operands ------------------------------------------------------------------------------


def _recurrence(product, x0, steps):
    """A decoder-like loop: each step's input depends on the previous output through the product."""
    x, outs = x0, []
    for _ in range(steps):
        y = product(x)
        outs.append(y)
        x = torch.tanh(y[..., : x0.size(-1)])
    return torch.stack(outs)


@pytest.mark.parametrize("add", [None, "vector", "matrix"])
def test_shared_operand_equals_plain_products(add):
    n, d_in, d_out, steps = 3, 4, 6, 5
    x0 = torch.randn(n, d_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d_in, d_out, dtype=torch.float64, requires_grad=True)
    bias = {None: None, "vector": torch.randn(d_out), "matrix": torch.randn(n, d_out)}[add]
    bias = None if bias is None else bias.double().requires_grad_()
    shared = ops.SharedOperand(w)
    assert shared.active
    fast = _recurrence(lambda x: shared.product(x, bias), x0, steps)
    ref = _recurrence(lambda x: ops.shared_product_reference(x, w, bias), x0, steps)
    torch.testing.assert_close(fast, ref)
    inputs = (x0, w) if bias is None else (x0, w, bias)
    for a, b in zip(_grads(fast, inputs), _grads(ref, inputs), strict=True):
        torch.testing.assert_close(a, b)


def test_batched_shared_operand_equals_plain_bmm():
    enc = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(2, 1, 7, dtype=torch.float64, requires_grad=True)
    shared = ops.SharedOperand(enc, batched=True)

    def loop(product):
        x, outs = x0, []
        for _ in range(4):
            y = product(x)  # (2, 1, 5)
            outs.append(y)
            x = torch.softmax(torch.cat([y, y[..., :2]], -1), -1)
        return torch.stack(outs)

    fast = loop(shared.product)
    ref = loop(lambda x: torch.bmm(x, enc))
    torch.testing.assert_close(fast, ref)
    for a, b in zip(_grads(fast, (x0, enc)), _grads(ref, (x0, enc)), strict=True):
        torch.testing.assert_close(a, b)


def test_shared_operand_under_bf16_autocast_runs_in_bf16_with_fp32_gradients():
    x0 = torch.randn(4, 16, requires_grad=True)
    w = torch.randn(16, 32, requires_grad=True)
    bias = torch.randn(32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        shared = ops.SharedOperand(w)
        fast = _recurrence(lambda x: shared.product(x, bias), x0, 3)
        ref = _recurrence(lambda x: torch.addmm(bias, x, w), x0, 3)
    assert fast.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(fast, ref)  # the same bf16 products in the same order
    fast_g = _grads(fast.float(), (x0, w, bias))
    ref_g = _grads(ref.float(), (x0, w, bias))
    for a, b in zip(fast_g, ref_g, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * float(b.abs().max()))


def test_inactive_shared_operand_is_the_plain_product():
    w = torch.randn(4, 6)
    x = torch.randn(3, 4)
    with torch.no_grad():
        shared = ops.SharedOperand(w.requires_grad_())
        assert not shared.active
        torch.testing.assert_close(shared.product(x), x @ w)


# -- the no-grad cache ----------------------------------------------------------------------------


def test_cache_follows_in_place_updates_and_never_serves_training():
    owner = nn.Linear(3, 4)
    builds = []

    def build():
        builds.append(1)
        return owner.weight.t() * 2

    with torch.no_grad():
        first = ops.cached_no_grad(owner, "_cache", [owner.weight], build)
        assert ops.cached_no_grad(owner, "_cache", [owner.weight], build) is first
        assert len(builds) == 1
        owner.weight.mul_(-1.0)  # what an optimizer step does
        second = ops.cached_no_grad(owner, "_cache", [owner.weight], build)
    assert len(builds) == 2
    torch.testing.assert_close(second, owner.weight.detach().t() * 2)
    trained = ops.cached_no_grad(owner, "_cache", [owner.weight], build)
    assert trained.requires_grad and len(builds) == 3
    with torch.no_grad():
        ops.cached_no_grad(owner, "_cache", [owner.weight], build)
    assert len(builds) == 4, "a value built with gradients on is not cached"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ops.cached_no_grad(owner, "_cache", [owner.weight], build)
    assert len(builds) == 5, "the autocast dtype is part of the key"


# -- precision settings ---------------------------------------------------------------------------


def test_amp_dtype_settings(monkeypatch, caplog):
    assert ops.amp_dtype("none", "cpu") is None
    with pytest.raises(ValueError, match="unknown precision"):
        ops.amp_dtype("fp8", "cpu")
    assert ops.amp_dtype("fp32", "cpu") is None
    monkeypatch.setattr(ops, "cpu_bf16_flags", lambda: set())
    monkeypatch.setattr(ops, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="asr.ops"):
        assert ops.amp_dtype("auto", "cpu") is None
        assert not caplog.records, "auto falls back silently"
        for _ in range(3):  # one warning per process, not one per batch
            assert ops.amp_dtype("bf16", "cpu") is None
            assert ops.amp_dtype("fp16", "cpu") is None
    assert len(caplog.records) == 2
    assert "no native bf16" in caplog.records[0].getMessage()
    monkeypatch.setattr(ops, "cpu_bf16_flags", lambda: {"amx_bf16"})
    assert ops.amp_dtype("auto", "cpu") is torch.bfloat16
    assert ops.amp_dtype("bf16", "cpu") is torch.bfloat16


def test_cpu_bf16_flags_agree_with_cpuinfo():
    """Detection through torch matches the kernel's CPU flags (where /proc/cpuinfo exists)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    assert bool(ops.cpu_bf16_flags()) == bool(flags & {"avx512_bf16", "amx_bf16"})
