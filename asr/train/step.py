"""One optimisation step: forward/backward of a micro-batch (with the OOM split) and the optimizer update."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from asr.train.config import TrainConfig
from asr.train.distributed import Dist, all_ranks_true

log = logging.getLogger(__name__)


@dataclass
class StepContext:
    """Objects the per-batch functions share."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    d: Dist
    amp_dtype: torch.dtype | None = None
    scaler: Any = None  # torch.amp.GradScaler for fp16, else None


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (AdamW when weight decay is set); the LR is set every step from :func:`asr.train.get_lr`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay > 0:
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, cfg.adam_beta2))


def amp_setup(cfg: TrainConfig, d: Dist) -> tuple[torch.dtype | None, Any]:
    """``(autocast dtype or None, GradScaler or None)`` for ``cfg.amp`` on ``d.device``."""
    from asr.ops import amp_dtype

    dtype = amp_dtype(cfg.amp, d.device)
    if dtype is not None:
        log.info("mixed precision: %s autocast on %s", dtype, d.device.type)
    return dtype, torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def _autocast(ctx: StepContext):
    if ctx.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.d.device.type, dtype=ctx.amp_dtype)


def forward_backward(ctx: StepContext, batch, weight: float, sync: bool = True) -> dict[str, float] | None:
    """Forward and backward one batch, scaling the loss by ``weight``; None if the loss is not finite.

    ``batch``: :class:`asr.data.dataset.Batch` (feats ``(B, T, n_mels)``, targets ``(B, U)``).
    ``weight`` turns this rank's per-utterance mean loss into its share of the global batch's mean
    (``world * local_utts / global_utts / accum_grad``), so DDP's gradient averaging equals one process
    on the union of the batches. With ``sync=False`` the DDP all-reduce is deferred (accumulation).
    """
    model = ctx.model
    batch = batch.to(ctx.d.device, non_blocking=True)
    no_sync = model.no_sync() if (ctx.d.enabled and not sync) else contextlib.nullcontext()
    with no_sync:
        with _autocast(ctx):
            out = model(batch.feats, batch.feat_lengths, batch.targets, batch.target_lengths)
        loss = out.loss.float()
        # Every rank must take the same branch, or DDP's all-reduce would wait forever.
        if not all_ranks_true(bool(torch.isfinite(loss)), ctx.d):
            return None
        scaled = loss * weight
        if ctx.scaler is not None:
            scaled = ctx.scaler.scale(scaled)
        scaled.backward()
    return {
        "loss": float(loss.detach()),
        "att_loss": float(out.att_loss.detach()),
        "ctc_loss": float(out.ctc_loss.detach()),
        "n_correct": float(out.n_correct),
        "n_tokens": float(out.n_tokens),
        "utts": len(batch),
    }


def _split_batch(batch):
    from asr.data.dataset import Batch

    half = len(batch) // 2
    parts = []
    for sl in (slice(0, half), slice(half, len(batch))):
        lengths = batch.feat_lengths[sl]
        tlen = batch.target_lengths[sl]
        t_max, u_max = int(lengths.max()), max(1, int(tlen.max()))
        parts.append(Batch(batch.feats[sl, :t_max], lengths, batch.targets[sl, :u_max], tlen,
                           batch.ids[sl], batch.texts[sl], batch.speakers[sl]))
    return parts


def forward_backward_guarded(ctx: StepContext, batch, weight: float, sync: bool) -> dict[str, float] | None | str:
    """:func:`forward_backward`, retrying a CUDA out-of-memory batch in halves (single process only).

    Returns the stats, None for a non-finite loss, or ``"oom"`` when even one utterance does not fit.
    """
    try:
        return forward_backward(ctx, batch, weight, sync)
    except torch.cuda.OutOfMemoryError:
        if ctx.d.enabled or ctx.d.device.type != "cuda":
            raise
        # A backward cut short leaves partial gradients; dropping them also drops the earlier
        # micro-batches of this update (only with accum_grad > 1), which is rare and harmless.
        ctx.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        if len(batch) == 1:
            log.warning("out of memory on %s (%d frames); skipping it", batch.ids[0], int(batch.feat_lengths[0]))
            return "oom"
        log.warning("out of memory on a batch of %d; retrying in halves", len(batch))
    stats = []
    for part in _split_batch(batch):
        s = forward_backward_guarded(ctx, part, weight * len(part) / len(batch), sync)
        if s is None or s == "oom":
            return s
        stats.append(s)
    n = sum(s["utts"] for s in stats)
    merged = {k: sum(s[k] * s["utts"] for s in stats) / n for k in ("loss", "att_loss", "ctc_loss")}
    merged.update(n_correct=sum(s["n_correct"] for s in stats), n_tokens=sum(s["n_tokens"] for s in stats), utts=n)
    return merged


def optimizer_step(ctx: StepContext, lr: float) -> float | None:
    """Clip and apply the accumulated gradients at learning rate ``lr``.

    Returns the gradient norm, or None when it was not finite (the update is skipped).
    """
    for group in ctx.optimizer.param_groups:
        group["lr"] = lr
    if ctx.scaler is not None:
        ctx.scaler.unscale_(ctx.optimizer)
    params = [p for p in ctx.model.parameters() if p.grad is not None]
    max_norm = ctx.cfg.grad_clip if ctx.cfg.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
    finite = bool(torch.isfinite(norm))
    if ctx.scaler is not None:
        # The scaler skips non-finite steps itself and lowers its scale; that is routine for fp16.
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        finite = True
    elif finite:
        ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return float(norm) if finite else None
