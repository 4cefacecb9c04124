"""The model's CPU speed forms, each beside the plain reference form it must equal.

:mod:`asr.model` calls the fast forms; the reference forms are the textbook definitions, kept here so
that a reader sees what each fast form computes and so that tests/test_ops.py can check the two agree
(forward and gradients). Training on CPU is what limits the recipes, hence each form:

- **Sigmoid attention scores.** ``tanh(e) = 2 sigmoid(2 e) - 1``; the ``-1`` adds the same constant to
  all of a head's scores, which the softmax ignores. PyTorch's CPU sigmoid is several times faster than
  its tanh, and the factor 2 on ``e`` is folded into the keys, the query and the location weights by
  the caller, so it costs nothing per element.
- **Folded location features.** The location convolution (one input channel per head) and its 1x1
  projection are linear, so they fold into one (kernel x attention_dim) matrix applied to the unfolded
  previous alignment: one large matmul instead of a slow narrow convolution.
- **Shared operands.** A matrix used in a product at every decoder step gets its gradient formed once
  per sequence in one large matmul instead of one outer product per step (:class:`SharedOperand`).
- **A no-grad cache** of weight matrices built from parameters, keyed on the parameters' version
  counters, so step-by-step decoding does not rebuild them at every step (:func:`cached_no_grad`).

Mixed precision: under ``torch.autocast`` (CPU bf16, CUDA bf16/fp16) the products here run in the
autocast dtype, like the built-in ones; :func:`accum_dtype` names the dtype that recurrent state,
softmaxes and losses stay in (fp32).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

T = TypeVar("T")
LOW_PRECISION = (torch.bfloat16, torch.float16)

# ------------------------------------------------------------------------------------------------
# Precision
# ------------------------------------------------------------------------------------------------


def cpu_bf16_flags() -> set[str]:
    """The CPU's bf16 matrix features that this process can see: a subset of {avx512_bf16, amx_bf16}.

    Asks PyTorch first (its oneDNN dispatch is what uses them), then /proc/cpuinfo.
    """
    found = set()
    cpu = getattr(torch, "cpu", None)
    for flag, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported")):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                found.add(flag)
        except RuntimeError:
            pass
    if not found:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
        flags = set()
        for line in text.splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[-1].split())
        found = flags & {"avx512_bf16", "amx_bf16"}
    return found


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matrix products run natively (and so faster than fp32) on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags())
    return False


def amp_dtype(mode: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for fp32.

    mode: "none" or "fp32", "bf16", "fp16" (CUDA only), or "auto" (bf16 where the device runs it
    natively, else fp32, silently). "bf16" on a CPU without bf16 units, or "fp16" on CPU, gives fp32
    and logs one warning per process: the emulated form is slower than fp32.
    """
    device = torch.device(device)
    if mode in ("none", "fp32"):
        return None
    if mode == "auto":
        return torch.bfloat16 if bf16_supported(device) else None
    if mode == "bf16":
        if bf16_supported(device):
            return torch.bfloat16
        _warn_once(f"bf16 requested but {device.type} has no native bf16 support (avx512_bf16/amx_bf16 "
                   "on CPU): running in fp32")
        return None
    if mode == "fp16":
        if device.type == "cuda":
            return torch.float16
        _warn_once(f"fp16 is used on CUDA only: running in fp32 on {device.type}")
        return None
    raise ValueError(f"unknown precision {mode!r}: expected none (fp32), auto, bf16 or fp16")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def autocast(dtype: torch.dtype | None, device: torch.device | str = "cpu"):
    """``torch.autocast`` on ``device`` with ``dtype``; a disabled one (fp32) when dtype is None."""
    device = torch.device(device)
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype for recurrent state, softmaxes and losses: fp32 for bf16/fp16 inputs, else ``dtype``."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def compute_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active on ``device_type``, or None outside autocast."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


# ------------------------------------------------------------------------------------------------
# Additive attention scores: tanh as a sigmoid
# ------------------------------------------------------------------------------------------------


def tanh_scores_reference(energy: Tensor, w: Tensor) -> Tensor:
    """``w_h . tanh(e_h)`` per head. energy: (N, T', A); w: (H, A / H). Returns (N, H, T')."""
    n, frames, dim = energy.shape
    h = w.size(0)
    return (torch.tanh(energy).view(n, frames, h, dim // h) * w).sum(-1).transpose(1, 2)


def sigmoid_scores(energy2: Tensor, w: Tensor) -> Tensor:
    """``2 w_h . sigmoid(energy2_h)``: :func:`tanh_scores_reference` of ``energy2 / 2`` plus ``sum(w_h)``.

    energy2: (N, T', A) twice the energy, overwritten (in place: the additions that made it do not need
    it for their backward); w: (H, A / H). Returns (N, H, T'); the per-head constant is lost in the
    softmax over frames.
    """
    n, frames, dim = energy2.shape
    h = w.size(0)
    energy = energy2.sigmoid_()
    w = 2 * w
    if h == 1:
        return torch.matmul(energy, w[0].to(energy.dtype)).unsqueeze(1)
    return (energy.view(n, frames, h, dim // h) * w).sum(-1).transpose(1, 2)


# ------------------------------------------------------------------------------------------------
# Location features: convolution and projection folded into one matrix
# ------------------------------------------------------------------------------------------------


def location_features_reference(prev: Tensor, conv: nn.Conv1d, proj: nn.Conv1d) -> Tensor:
    """``proj(conv(prev))``, channels last. prev: (N, H, T') previous alignment. Returns (N, T', A)."""
    return proj(conv(prev)).transpose(1, 2)


def folded_location_matrix(conv_weight: Tensor, proj_weight: Tensor, heads: int, scale: float = 1.0) -> Tensor:
    """The grouped convolution (H*C, 1, K) then 1x1 projection (A, C, 1) as one map: (H, K, A / H), times scale."""
    kernel = conv_weight.size(-1)
    conv = conv_weight.view(heads, -1, kernel)  # (H, C, K)
    proj = proj_weight.view(heads, -1, conv.size(1))  # (H, A/H, C)
    return scale * torch.bmm(proj, conv).transpose(1, 2)


def location_features(prev: Tensor, matrix: Tensor) -> Tensor:
    """:func:`location_features_reference` from the folded matrix (H, K, A / H). prev: (N, H, T') -> (N, T', A)."""
    n, h, frames = prev.shape
    kernel = matrix.size(1)
    pad = kernel // 2
    # (N, H, T', K) sliding windows of the previous alignment, a view until the matmul.
    windows = F.pad(prev, (pad, pad)).unfold(-1, kernel, 1)
    if h == 1:
        return torch.matmul(windows[:, 0], matrix[0])
    return torch.matmul(windows, matrix[None]).transpose(1, 2).reshape(n, frames, -1)


# ------------------------------------------------------------------------------------------------
# Shared operands: one gradient product per sequence instead of one per step
# ------------------------------------------------------------------------------------------------


def shared_product_reference(x: Tensor, operand: Tensor, add: Tensor | None = None, batched: bool = False) -> Tensor:
    """``add + x @ operand``, or ``bmm(x, operand)`` with ``batched``: plain autograd products."""
    if batched:
        return torch.bmm(x, operand)
    return torch.mm(x, operand) if add is None else torch.addmm(add, x, operand)


class SharedOperand:
    """A matrix used in a product at every decoder step, whose gradient is formed once for all steps.

    Plain autograd (:func:`shared_product_reference`) forms the gradient of a shared operand step by
    step: an outer product with the batch as inner dimension (a large, memory-bound write) added into an
    accumulator. Here each step's backward only keeps its other operand and incoming gradient, and a
    node placed before the loop (so that it runs after every step's backward) sums them in one large
    matmul. With ``batched`` the product is ``bmm(x (N, h, T'), operand (N, T', D))``, else
    ``x (N, in) @ operand (in, out)``. Under autocast the operand is cast once, here, and every product
    runs in its dtype.
    """

    def __init__(self, operand: Tensor, batched: bool = False):
        self.batched = batched
        self.store: list[tuple[Tensor, Tensor]] = []
        dtype = compute_dtype(operand.device.type)
        if dtype is not None and operand.dtype != dtype:
            operand = operand.to(dtype)
        self.active = operand.requires_grad and torch.is_grad_enabled()
        self.operand = _GatherGrad.apply(operand, self.store, batched) if self.active else operand

    def product(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        """``add + x @ operand`` (``add`` (out,) or (N, out), mm only) or ``bmm(x, operand)``."""
        if self.active:
            return _StepProduct.apply(x, self.operand, add, self.store, self.batched)
        dtype = self.operand.dtype
        return shared_product_reference(x.to(dtype), self.operand, None if add is None else add.to(dtype), self.batched)


class _StepProduct(torch.autograd.Function):
    # Every product runs in the operand's dtype, so the backward (which autocast does not cover)
    # sees the same dtypes as the forward.
    @staticmethod
    def forward(ctx, x, operand, add, store, batched):
        dtype = operand.dtype
        ctx.x_dtype, ctx.add_dtype = x.dtype, None if add is None else add.dtype
        x = x.to(dtype)
        ctx.save_for_backward(x, operand)
        ctx.store, ctx.batched, ctx.add_dim = store, batched, None if add is None else add.dim()
        return shared_product_reference(x, operand, None if add is None else add.to(dtype), batched)

    @staticmethod
    def backward(ctx, grad):
        x, operand = ctx.saved_tensors
        grad = grad.to(operand.dtype)
        ctx.store.append((x, grad))
        grad_x = grad_add = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad, operand.transpose(1, 2)) if ctx.batched else torch.mm(grad, operand.t())
            grad_x = grad_x.to(ctx.x_dtype)
        if ctx.add_dim is not None and ctx.needs_input_grad[2]:
            grad_add = grad.to(ctx.add_dtype) if ctx.add_dim == 2 else grad.sum(0, dtype=ctx.add_dtype)
        return grad_x, None, grad_add, None, None


class _GatherGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, operand, store, batched):
        ctx.set_materialize_grads(False)
        ctx.store, ctx.batched = store, batched
        return operand.view_as(operand)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.store:
            return grad, None, None
        dim = 1 if ctx.batched else 0
        xs = torch.cat([x for x, _ in ctx.store], dim)  # (N, steps * h, T') or (steps * N, in)
        grads = torch.cat([g for _, g in ctx.store], dim)
        ctx.store.clear()
        total = torch.bmm(xs.transpose(1, 2), grads) if ctx.batched else torch.mm(xs.t(), grads)
        return (total if grad is None else total + grad), None, None


# ------------------------------------------------------------------------------------------------
# A no-grad cache keyed on parameter versions
# ------------------------------------------------------------------------------------------------


def cached_no_grad(owner: nn.Module, name: str, params: Sequence[Tensor], build: Callable[[], T], *extra) -> T:
    """``build()``, cached on ``owner`` while no gradient is recorded.

    The key is each parameter's storage and version counter (an in-place update such as an optimizer
    step or load_state_dict changes it), the autocast dtype and ``extra``. With gradients enabled it
    builds afresh and drops the cache, so training never reads a stale or graph-less copy.
    """
    key = (tuple((p.data_ptr(), p._version) for p in params), compute_dtype(params[0].device.type), extra)
    cached = owner.__dict__.get(name)
    if not torch.is_grad_enabled() and cached is not None and cached[0] == key:
        return cached[1]
    value = build()
    owner.__dict__[name] = None if torch.is_grad_enabled() else (key, value)
    return value
