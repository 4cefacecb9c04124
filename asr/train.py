"""Training loop: a plain ``while`` over batches, split into small steps (nanoGPT style).

``train(exp_config, train_manifest, valid_manifest, tokenizer_path, exp_dir)`` builds the data (duration-
bucketed batches, too-long utterances filtered and reported), the model (vocabulary from the tokenizer,
CMVN from ``cmvn.json`` or computed), Adam with linear warm-up then decay, and runs:

* gradient accumulation and clipping; mixed precision on CUDA (bf16, or fp16 with a GradScaler);
* numerical guards: a non-finite loss or gradient skips the update (counted and logged), and
  ``max_nonfinite`` of them in a row stop training with :class:`TrainingDivergedError`; on CUDA a batch
  that runs out of memory is retried in halves, or skipped when a single utterance does not fit;
* validation every ``valid_every_epochs`` epochs and every ``valid_every_steps`` updates (loss, token
  accuracy, greedy WER on a fixed dev subset), keeping the best ``keep_best`` weights by dev loss (then
  WER), and stopping early once the dev WER reaches ``target_wer`` (off by default);
* exact resume: model, optimizer, step, epoch, the sampler's position inside the epoch and every RNG
  state are checkpointed, so ``resume=True`` continues with the same batches, dropout and SpecAugment
  masks as an uninterrupted run (the LR schedule is a pure function of the step, so it needs no state);
* logging to ``train.log``, ``metrics.csv``, TensorBoard (when importable), tqdm, and PNG plots.

Distributed data parallel: launch with ``torchrun --nproc-per-node N -m asr train ...``; each rank
trains on its share of the batches (gloo on CPU, nccl on CUDA), gradients are averaged by DDP with the
loss weighted so the update equals one process on the union of the ranks' batches, and only rank 0
writes files. The experiment folder layout is documented in :mod:`asr.checkpoint`.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from asr import checkpoint as ckpt
from asr.errors import AsrError, ConfigError
from asr.io_utils import atomic_write_text

log = logging.getLogger(__name__)

SCHEDULES = ("noam", "cosine", "constant")
AMP_MODES = ("none", "bf16", "fp16")
SOURCES = ("audio", "cached")
METRIC_FIELDS = ["step", "epoch", "split", "loss", "att_loss", "ctc_loss", "acc", "wer", "lr", "seconds"]


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (YAML section ``train``)."""

    seed: int = 0
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    warmup_steps: int = 500
    lr_schedule: str = "noam"  # decay after warm-up: noam (1/sqrt(step)), cosine (to min_lr), constant
    min_lr: float = 1e-5
    max_epochs: int = 30
    max_steps: int = 0  # optimizer updates; 0 = no limit (max_epochs decides)
    max_duration: float = 60.0  # seconds of audio per batch (per rank, before accumulation)
    num_buckets: int = 10
    grad_clip: float = 5.0  # max global gradient norm; 0 = no clipping
    accum_grad: int = 1
    amp: str = "none"  # none | bf16 | fp16 (CUDA only; ignored on CPU)
    weight_decay: float = 0.0
    adam_beta2: float = 0.98
    valid_every_steps: int = 0  # also validate every K updates; 0 = at epoch ends only
    valid_every_epochs: int = 1  # 0 = never at epoch ends (then valid_every_steps decides)
    target_wer: float = -1.0  # stop once the dev greedy WER is <= this; negative = never
    checkpoint_every_steps: int = 500  # 0 = only at epoch ends
    keep_checkpoints: int = 3
    keep_best: int = 5
    average_n: int = 5  # final/average model folder averages the best N (1 = none)
    dev_wer_utts: int = 100  # dev utterances decoded greedily for the WER
    max_utt_seconds: float = 20.0
    min_utt_seconds: float = 0.1
    max_nonfinite: int = 10  # stop after this many non-finite steps in a row
    num_workers: int = 2
    num_threads: int = 0  # torch intra-op threads; 0 = torch's default
    feature_source: str = "audio"  # audio (on the fly) | cached (asr features shards)
    deterministic: bool = False
    log_every: int = 25
    plots: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        checks = [
            (self.lr > 0, "lr must be > 0"),
            (self.min_lr >= 0, "min_lr must be >= 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {', '.join(SCHEDULES)}"),
            (self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}"),
            (self.feature_source in SOURCES, f"feature_source must be one of {', '.join(SOURCES)}"),
            (self.max_epochs >= 1, "max_epochs must be >= 1"),
            (self.max_steps >= 0, "max_steps must be >= 0"),
            (self.max_duration > 0, "max_duration must be > 0"),
            (self.num_buckets >= 1, "num_buckets must be >= 1"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.accum_grad >= 1, "accum_grad must be >= 1"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 < self.adam_beta2 < 1, "adam_beta2 must be in (0, 1)"),
            (self.valid_every_steps >= 0, "valid_every_steps must be >= 0"),
            (self.valid_every_epochs >= 0, "valid_every_epochs must be >= 0"),
            (self.checkpoint_every_steps >= 0, "checkpoint_every_steps must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.keep_best >= 1, "keep_best must be >= 1"),
            (self.average_n >= 1, "average_n must be >= 1"),
            (self.dev_wer_utts >= 0, "dev_wer_utts must be >= 0"),
            (self.max_utt_seconds > 0, "max_utt_seconds must be > 0"),
            (self.max_nonfinite >= 1, "max_nonfinite must be >= 1"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.num_threads >= 0, "num_threads must be >= 0"),
            (self.log_every >= 1, "log_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class TrainingDivergedError(AsrError):
    """Training produced non-finite losses or gradients too many times in a row."""


@dataclass
class TrainState:
    """The mutable part of training that a checkpoint must restore."""

    step: int = 0  # optimizer updates done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of this epoch consumed (trained on or skipped)
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    skipped_batches: int = 0  # batches skipped for bad audio or OOM
    best: list[dict[str, Any]] = field(default_factory=list)  # {"step", "loss", "wer", "path"}

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns."""

    exp_dir: Path
    final_dir: Path
    average_dir: Path | None
    steps: int
    epochs: int
    train_loss: float  # mean loss of the last logging window
    best_dev_loss: float
    best_dev_wer: float
    nonfinite_skipped: int
    skipped_batches: int
    filtered_utts: int
    failed_utts: int  # unreadable utterances skipped (listed in exp/failures.tsv)
    rank: int = 0  # this process's rank under torchrun (only rank 0 wrote files)


@dataclass
class Dist:
    """Where this process runs: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# -- setup ----------------------------------------------------------------------------------------


def setup_distributed() -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, world, local_rank, device)


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate of update number ``step`` (0-based): linear warm-up to ``cfg.lr``, then decay.

    noam: ``lr * sqrt(warmup / step)``; cosine: half cosine from ``lr`` to ``min_lr`` at ``total_steps``;
    constant: ``lr``. Never below ``min_lr`` after warm-up.
    """
    s = step + 1
    if cfg.warmup_steps and s <= cfg.warmup_steps:
        return cfg.lr * s / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "noam":
        return max(cfg.min_lr, cfg.lr * math.sqrt(max(cfg.warmup_steps, 1) / s))
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (s - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states, as weights-only-loadable values (tensors, ints, floats, strings)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(pystate, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- data -----------------------------------------------------------------------------------------


@dataclass
class Data:
    """Everything :func:`train` needs from the data side."""

    tokenizer: Any
    train_set: Any
    sampler: Any
    loader: Any
    dev_set: Any
    filtered: list[tuple[str, str]]
    batches_per_epoch: int


def subsampling_factor(model_cfg) -> int:
    """Encoder time reduction: frame stacking times 2 per pyramid layer."""
    return int(getattr(model_cfg, "frame_stack", 1)) * 2 ** int(getattr(model_cfg, "pyramid_layers", 0))


def build_data(exp_config, train_manifest, valid_manifest, tokenizer, d: Dist) -> Data:
    """Read manifests, filter unusable utterances, and build the datasets, sampler and loader."""
    from asr.data.dataset import AsrDataset, filter_utterances, make_loader
    from asr.data.manifest import read_manifest
    from asr.data.sampler import DynamicBucketSampler

    cfg = exp_config.train
    utts = read_manifest(train_manifest)
    kept, rejected = filter_utterances(
        utts, cfg.max_utt_seconds, tokenizer, min_seconds=cfg.min_utt_seconds,
        feature_cfg=exp_config.features, subsampling=subsampling_factor(exp_config.model),
    )
    if rejected:
        log.warning("filtered %d of %d training utterances (see filtered.tsv), e.g. %s: %s",
                    len(rejected), len(utts), *rejected[0])
    if not kept:
        raise ConfigError(train_manifest, "no training utterance is left after filtering "
                          f"(max_utt_seconds={cfg.max_utt_seconds})")
    train_set = AsrDataset(kept, tokenizer, exp_config.features, source=cfg.feature_source)
    sampler = DynamicBucketSampler(train_set.durations, cfg.max_duration, cfg.num_buckets, shuffle=True,
                                   seed=cfg.seed, rank=d.rank, world_size=d.world_size)
    loader = make_loader(train_set, sampler, num_workers=cfg.num_workers, pin_memory=d.device.type == "cuda")
    dev_utts = read_manifest(valid_manifest)
    dev_kept, _ = filter_utterances(dev_utts, cfg.max_utt_seconds, None, feature_cfg=exp_config.features)
    dev_set = AsrDataset(dev_kept or dev_utts, tokenizer, exp_config.features, source=cfg.feature_source)
    plan = DynamicBucketSampler(train_set.durations, cfg.max_duration, cfg.num_buckets, seed=cfg.seed,
                                rank=d.rank, world_size=d.world_size)
    return Data(tokenizer, train_set, sampler, loader, dev_set, rejected, len(plan))


def load_or_compute_cmvn(exp_config, train_set, exp_dir: Path, cmvn_path, d: Dist):
    """Return CMVN ``(mean (n_mels,), std (n_mels,))``: from ``cmvn_path``, ``exp/cmvn.json``, or computed.

    Only rank 0 computes; the others wait and read the file it wrote.
    """
    from asr.features import GlobalCMVN

    cached = exp_dir / "cmvn.json"
    source = Path(cmvn_path) if cmvn_path else cached
    if d.is_main and not source.exists():
        from asr.data.featstage import compute_cmvn

        log.info("computing CMVN statistics over %d utterances", len(train_set.utts))
        cmvn = compute_cmvn(train_set.utts, exp_config.features, max(1, exp_config.train.num_workers))
        cmvn.save(cached)
    if d.is_main and source != cached and not cached.exists():
        shutil.copyfile(source, cached)
    if d.enabled:
        dist.barrier()
    cmvn = GlobalCMVN.load(source)  # DataError names the file when it is missing or malformed
    if cmvn.n_mels != exp_config.features.n_mels:
        raise ConfigError(source, f"CMVN has {cmvn.n_mels} dims but features.n_mels is {exp_config.features.n_mels}")
    mean, std = cmvn.finalize()
    return torch.from_numpy(mean), torch.from_numpy(std)


# -- model and optimizer ----------------------------------------------------------------------------


def build_model(exp_config, mean: torch.Tensor, std: torch.Tensor, d: Dist) -> torch.nn.Module:
    """LAS from the config with CMVN set, on ``d.device``, wrapped in DDP when distributed."""
    model = ckpt.build_las(exp_config)
    model.set_cmvn(mean, std)
    model.to(d.device)
    return wrap_ddp(model, d)


def wrap_ddp(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """Wrap ``model`` in DistributedDataParallel when running on several ranks."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.device.index] if d.device.type == "cuda" else None
    # LAS builds only the parts its ctc_weight uses, so every parameter gets a gradient every step.
    return DistributedDataParallel(model, device_ids=ids)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (AdamW when weight decay is set); the LR is set every step from :func:`lr_at`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay > 0:
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, cfg.adam_beta2))


# -- one step ---------------------------------------------------------------------------------------


@dataclass
class StepContext:
    """Objects the per-batch functions share."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    d: Dist
    amp_dtype: torch.dtype | None
    scaler: Any  # torch.amp.GradScaler for fp16, else None


def _autocast(ctx: StepContext):
    if ctx.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.d.device.type, dtype=ctx.amp_dtype)


def _global_count(n: int, d: Dist) -> int:
    if not d.enabled:
        return n
    t = torch.tensor([n], dtype=torch.long, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return int(t.item())


def _all_ranks_true(flag: bool, d: Dist) -> bool:
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def forward_backward(ctx: StepContext, batch, weight: float, sync: bool = True) -> dict[str, float] | None:
    """Forward and backward one batch, scaling the loss by ``weight``; None if the loss is not finite.

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
        if not _all_ranks_true(bool(torch.isfinite(loss)), ctx.d):
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


def _all_reduce_grads(model: torch.nn.Module, d: Dist) -> None:
    # The micro-batch that would have triggered DDP's all-reduce was skipped; average by hand so the
    # ranks do not drift apart.
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= d.world_size


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


# -- validation -----------------------------------------------------------------------------------


def greedy_decode(model, feats: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Greedy attention decoding of a batch ``feats (B, T, n_mels)``; returns token ids without EOS.

    The search is :func:`asr.decoding.search` (beam 1, no CTC: greedy), as ``asr decode --beam 1
    --ctc-weight 0`` runs it.
    """
    from asr.decoding import DecodeOptions, search

    enc, enc_lengths = model.encode(feats, lengths)
    return [list(nbest[0].tokens) for nbest in search(model, enc, enc_lengths, DecodeOptions(beam_size=1, ctc_weight=0.0))]


@torch.no_grad()
def validate(model, dev_set, tokenizer, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Dev loss, token accuracy and greedy WER (on the first ``dev_wer_utts`` utterances).

    Runs in eval mode inside a forked RNG so that validating never changes the training randomness.
    """
    import jiwer

    from asr.data.dataset import collate
    from asr.data.sampler import DynamicBucketSampler

    model = ckpt.unwrap_model(model)
    was_training = model.training
    model.eval()
    tot = {"loss": 0.0, "att_loss": 0.0, "ctc_loss": 0.0, "n_correct": 0.0, "n_tokens": 0.0, "utts": 0}
    refs: list[str] = []
    hyps: list[str] = []
    wer_ids = {u.id for u in dev_set.utts[: cfg.dev_wer_utts]}  # a fixed subset, comparable across epochs
    with torch.random.fork_rng(devices=[]):
        sampler = DynamicBucketSampler(dev_set.durations, cfg.max_duration, 1, shuffle=False, rank=0, world_size=1)
        for indices in sampler:
            batch = collate([dev_set[i] for i in indices])
            if len(batch) == 0:
                continue
            batch = batch.to(device)
            out = model(batch.feats, batch.feat_lengths, batch.targets, batch.target_lengths)
            n = len(batch)
            for k in ("loss", "att_loss", "ctc_loss"):
                tot[k] += float(getattr(out, k)) * n
            tot["n_correct"] += float(out.n_correct)
            tot["n_tokens"] += float(out.n_tokens)
            tot["utts"] += n
            wer_sel = [j for j, uid in enumerate(batch.ids) if uid in wer_ids]
            if wer_sel:
                sel = torch.tensor(wer_sel, device=device)
                lens = batch.feat_lengths[sel]
                for j, ids in zip(wer_sel, greedy_decode(model, batch.feats[sel, : int(lens.max())], lens)):
                    refs.append(batch.texts[j])
                    hyps.append(tokenizer.decode(ids))
    model.train(was_training)
    n = max(1, tot["utts"])
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    wer = jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]) if pairs else float("nan")
    return {
        "loss": tot["loss"] / n, "att_loss": tot["att_loss"] / n, "ctc_loss": tot["ctc_loss"] / n,
        "acc": tot["n_correct"] / max(1.0, tot["n_tokens"]), "wer": float(wer),
    }


# -- bookkeeping: checkpoints, best-N, metrics, plots -------------------------------------------------


def training_checkpoint(ctx: StepContext, data: Data, state: TrainState, exp_config, rngs: list) -> dict:
    """The full training state as a weights-only-loadable dict."""
    return {
        "model": ckpt.cpu_state_dict(ctx.model),
        "optimizer": ctx.optimizer.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else {},
        "sampler": data.sampler.state_dict(state.batches_in_epoch),
        "state": state.to_dict(),
        "rng": rngs,
        "config": exp_config.to_sections(),
    }


def _gather_rng(d: Dist) -> list:
    if not d.enabled:
        return [rng_state()]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, rng_state())
    return out


def save_training_checkpoint(ctx: StepContext, data: Data, state: TrainState, exp_config, exp_dir: Path) -> None:
    """Write ``checkpoints/ckpt-<step>.pt`` (rank 0) and delete all but the newest ``keep_checkpoints``."""
    rngs = _gather_rng(ctx.d)  # collective: every rank takes part
    if not ctx.d.is_main:
        return
    folder = exp_dir / "checkpoints"
    path = folder / f"ckpt-{state.step}.pt"
    ckpt.save_checkpoint(path, training_checkpoint(ctx, data, state, exp_config, rngs))
    for old in ckpt.list_checkpoints(folder)[: -ctx.cfg.keep_checkpoints]:
        old.unlink(missing_ok=True)
        ckpt.checksum_path(old).unlink(missing_ok=True)


def restore_training_checkpoint(ctx: StepContext, data: Data, exp_config, path: Path) -> TrainState:
    """Load a training checkpoint into the model, optimizer, sampler and RNGs; return the state."""
    obj = ckpt.load_checkpoint(path, map_location=ctx.d.device)
    saved = exp_config.to_sections()
    stored = obj.get("config", {})
    if stored.get("model") != saved["model"] or stored.get("features") != saved["features"]:
        raise ConfigError(path, "the model or features config differs from the checkpoint's; cannot resume")
    ckpt.unwrap_model(ctx.model).load_state_dict(obj["model"])
    ctx.optimizer.load_state_dict(obj["optimizer"])
    if ctx.scaler is not None and obj.get("scaler"):
        ctx.scaler.load_state_dict(obj["scaler"])
    state = TrainState(**obj["state"])
    data.sampler.set_epoch(state.epoch)
    if state.batches_in_epoch:
        data.sampler.load_state_dict(obj["sampler"])
    rngs = obj["rng"]
    set_rng_state(rngs[ctx.d.rank] if ctx.d.rank < len(rngs) else rngs[0])
    log.info("resumed from %s (step %d, epoch %d, batch %d of the epoch)", path, state.step, state.epoch,
             state.batches_in_epoch)
    return state


def update_best(model, exp_config, state: TrainState, metrics: dict[str, float], exp_dir: Path, keep: int) -> bool:
    """Keep the best ``keep`` validations' weights in ``exp/best`` (by dev loss, then WER).

    Returns True when this validation entered the best list.
    """
    folder = exp_dir / "best"
    wer = metrics["wer"] if math.isfinite(metrics["wer"]) else float("inf")
    entry = {"step": state.step, "loss": metrics["loss"], "wer": wer, "path": f"model-{state.step}.pt"}
    ranked = sorted([e for e in state.best if e["step"] != state.step] + [entry], key=lambda e: (e["loss"], e["wer"]))
    kept, dropped = ranked[:keep], ranked[keep:]
    if entry in kept:
        ckpt.save_checkpoint(folder / entry["path"], {"model": ckpt.cpu_state_dict(model),
                                                      "config": exp_config.to_sections()})
    for e in dropped:
        (folder / e["path"]).unlink(missing_ok=True)
        ckpt.checksum_path(folder / e["path"]).unlink(missing_ok=True)
    state.best = kept
    import json

    atomic_write_text(folder / "best.json", json.dumps(kept, indent=1) + "\n")
    return entry in kept


class MetricsLog:
    """metrics.csv (and TensorBoard scalars when available), written by rank 0 only."""

    def __init__(self, exp_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = exp_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.writer = None
        if not enabled:
            return
        if self.path.exists() and resume_step is not None:
            with open(self.path, newline="") as f:
                # Rows logged after the checkpoint we resume from will be logged again.
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._rewrite()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(exp_dir / "tensorboard"), purge_step=resume_step)
            except ImportError:
                log.info("tensorboard is not installed; skipping TensorBoard logs")

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_FIELDS)
            w.writeheader()
            w.writerows(self.rows)

    def add(self, split: str, step: int, epoch: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "epoch": epoch, "split": split}
        row.update({k: f"{v:.6g}" for k, v in values.items() if k in METRIC_FIELDS})
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow(row)
        if self.writer is not None:
            for k, v in values.items():
                if k in METRIC_FIELDS and k not in ("step", "epoch"):
                    self.writer.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Learning curves (train/dev loss, dev WER) from metrics rows into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("dev", "o-")):
        pts = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == split and r.get("loss")]
        if pts:
            ax1.plot(*zip(*pts), style, label=f"{split} loss")
    wer = [(int(r["step"]), float(r["wer"])) for r in rows if r["split"] == "dev" and r.get("wer")]
    if wer:
        ax2.plot(*zip(*wer), "o-", color="C2")
    ax1.set(xlabel="step", ylabel="loss", title="loss")
    ax1.legend()
    ax2.set(xlabel="step", ylabel="WER", title="dev greedy WER")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


@torch.no_grad()
def plot_attention(model, dev_set, path: Path, device: torch.device) -> None:
    """Attention alignment of the first dev utterance (decoder steps x encoder frames) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr.data.dataset import collate

    model = ckpt.unwrap_model(model)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        batch = collate([dev_set[0]])
        if len(batch) == 0:
            return
        batch = batch.to(device)
        out = model(batch.feats, batch.feat_lengths, batch.targets, batch.target_lengths)
    model.train(was_training)
    att = getattr(out, "attention", None)
    if att is None:
        return
    u = int(batch.target_lengths[0]) + 1
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.imshow(att[0, :u].float().cpu().numpy(), aspect="auto", origin="lower", interpolation="nearest")
    ax.set(xlabel="encoder frame", ylabel="output token", title=batch.ids[0])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- the loop ---------------------------------------------------------------------------------------


def _setup_files(exp_dir: Path, exp_config, tokenizer, d: Dist) -> logging.Handler | None:
    if not d.is_main:
        logging.getLogger("asr").setLevel(logging.WARNING)  # rank 0 reports progress for all
        return None
    exp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp_dir / "config.yaml", exp_config.to_yaml())
    tokenizer.copy_to(exp_dir)
    handler = logging.FileHandler(exp_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("asr").addHandler(handler)
    if logging.getLogger("asr").getEffectiveLevel() > logging.INFO:
        logging.getLogger("asr").setLevel(logging.INFO)
    return handler


def _resolve_config(exp_config, tokenizer):
    from asr.config import replace

    model_cfg = replace(exp_config.model, "model", vocab_size=tokenizer.vocab_size,
                        n_mels=exp_config.features.n_mels)
    return type(exp_config)(exp_config.features, exp_config.specaug, model_cfg, exp_config.train)


def _amp(cfg: TrainConfig, d: Dist) -> tuple[torch.dtype | None, Any]:
    if cfg.amp == "none":
        return None, None
    if d.device.type != "cuda":
        log.info("amp=%s ignored: mixed precision is used on CUDA only", cfg.amp)
        return None, None
    if cfg.amp == "bf16":
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _rng_neutral_iter(loader):
    # Creating a DataLoader iterator draws a seed from the global torch RNG; an uninterrupted run draws
    # it at the epoch start and a resumed one mid-epoch, so keep it from shifting the training stream.
    with torch.random.fork_rng(devices=[]):
        return iter(loader)


def _progress(total: int, initial: int, d: Dist):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not d.is_main or not sys.stderr.isatty(),
                unit="batch", dynamic_ncols=True, leave=False)


class Trainer:
    """Holds the objects of one training run; :meth:`run` is the loop."""

    def __init__(self, exp_config, data: Data, ctx: StepContext, state: TrainState, exp_dir: Path,
                 metrics: MetricsLog):
        self.exp_config, self.data, self.ctx, self.state = exp_config, data, ctx, state
        self.cfg = exp_config.train
        self.exp_dir = exp_dir
        self.metrics = metrics
        # From epoch 0's plan, so that a resumed run computes the same (cosine) schedule.
        self.total_steps = self.cfg.max_steps or self.cfg.max_epochs * math.ceil(
            data.batches_per_epoch / self.cfg.accum_grad)
        self.window: list[dict[str, float]] = []
        self.last_train_loss = float("nan")
        self.last_dev: dict[str, float] = {}
        self.saved_step = state.step if state.step else -1
        self.failed: dict[str, str] = {}  # utterance id -> why it could not be loaded
        self.synced = False  # whether DDP all-reduced the gradients of the pending update
        self.reached_target = False  # dev WER reached cfg.target_wer

    def done(self) -> bool:
        st = self.state
        return self.reached_target or st.epoch >= self.cfg.max_epochs or 0 < self.cfg.max_steps <= st.step

    def run(self) -> None:
        while not self.done():
            self.run_epoch()
        if self.saved_step != self.state.step:
            # A run stopped by max_steps can be resumed later with a larger limit.
            self.save()

    def save(self) -> None:
        save_training_checkpoint(self.ctx, self.data, self.state, self.exp_config, self.exp_dir)
        self.saved_step = self.state.step

    def run_epoch(self) -> None:
        st, cfg, sampler = self.state, self.cfg, self.data.sampler
        sampler.set_epoch(st.epoch)
        remaining = len(sampler)  # after a mid-epoch resume: the batches still to come
        epoch_total = st.batches_in_epoch + remaining
        bar = _progress(remaining + st.batches_in_epoch, st.batches_in_epoch, self.ctx.d)
        pending = 0  # micro-batches accumulated since the last update
        micro_in_update = min(cfg.accum_grad, remaining)
        t0 = time.perf_counter()
        for i, batch in enumerate(_rng_neutral_iter(self.data.loader)):
            st.batches_in_epoch += 1
            bar.update(1)
            last_of_epoch = i == remaining - 1
            stats = self.train_batch(batch, micro_in_update, sync=pending + 1 == micro_in_update or last_of_epoch)
            pending += 1
            if stats is not None:
                self.window.append(stats)
            if pending == micro_in_update or last_of_epoch:
                self.update(time.perf_counter() - t0)
                pending = 0
                micro_in_update = min(cfg.accum_grad, remaining - i - 1)
                bar.set_postfix(loss=f"{self.last_train_loss:.3f}", step=st.step)
                self.after_update(epoch_end=last_of_epoch)
                t0 = time.perf_counter()
                if self.done():
                    break
        bar.close()
        if st.batches_in_epoch == epoch_total:
            self.end_epoch()

    def train_batch(self, batch, micro: int, sync: bool) -> dict[str, float] | None:
        """Forward/backward one micro-batch; skip (and count) an empty, OOM or non-finite one."""
        st, d = self.state, self.ctx.d
        for uid, reason in batch.failed:
            if uid not in self.failed:
                log.warning("skipped unreadable utterance %s: %s", uid, reason)
            self.failed[uid] = reason
        # Under DDP every rank must run the same collectives, so a batch empty on any rank is skipped by all.
        if not _all_ranks_true(len(batch) > 0, d):
            st.skipped_batches += 1
            return None
        n_global = _global_count(len(batch), d)
        weight = d.world_size * len(batch) / n_global / micro
        stats = forward_backward_guarded(self.ctx, batch, weight, sync)
        self.synced = self.synced or (sync and stats is not None and stats != "oom")
        if stats == "oom":
            st.skipped_batches += 1
            return None
        if stats is None:
            self.count_nonfinite(f"non-finite loss on batch {batch.ids[:3]}...")
            return None
        return stats

    def count_nonfinite(self, what: str) -> None:
        st = self.state
        st.nonfinite_in_row += 1
        st.nonfinite_total += 1
        log.warning("step %d: %s; skipped (%d in a row, %d in total)", st.step, what, st.nonfinite_in_row,
                    st.nonfinite_total)
        if st.nonfinite_in_row >= self.cfg.max_nonfinite:
            raise TrainingDivergedError(
                self.exp_dir, f"{st.nonfinite_in_row} non-finite losses/gradients in a row at step {st.step}; "
                "lower train.lr, enable train.grad_clip or check the data")

    def update(self, seconds: float) -> None:
        """Apply the accumulated gradients (or skip a non-finite update) and log the window."""
        st = self.state
        if not any(p.grad is not None for p in self.ctx.model.parameters()):
            return  # every micro-batch was skipped; the guard already counted them
        if self.ctx.d.enabled and not self.synced:
            _all_reduce_grads(self.ctx.model, self.ctx.d)
        self.synced = False
        lr = lr_at(self.cfg, st.step, self.total_steps)
        norm = optimizer_step(self.ctx, lr)
        if norm is None:
            self.count_nonfinite("non-finite gradient")
            return
        st.nonfinite_in_row = 0
        st.step += 1
        if self.window and (st.step % self.cfg.log_every == 0):
            self.log_window(lr, seconds)

    def log_window(self, lr: float, seconds: float) -> None:
        w, st = self.window, self.state
        n = sum(s["utts"] for s in w)
        mean = {k: sum(s[k] * s["utts"] for s in w) / n for k in ("loss", "att_loss", "ctc_loss")}
        mean["acc"] = sum(s["n_correct"] for s in w) / max(1.0, sum(s["n_tokens"] for s in w))
        self.last_train_loss = mean["loss"]
        log.info("step %d epoch %d loss %.4f (att %.4f ctc %.4f) acc %.3f lr %.2e", st.step, st.epoch,
                 mean["loss"], mean["att_loss"], mean["ctc_loss"], mean["acc"], lr)
        self.metrics.add("train", st.step, st.epoch, {**mean, "lr": lr, "seconds": seconds})
        self.window = []

    def validates_at_epoch_end(self) -> bool:
        return self.cfg.valid_every_epochs > 0 and (self.state.epoch + 1) % self.cfg.valid_every_epochs == 0

    def after_update(self, epoch_end: bool) -> None:
        st, cfg = self.state, self.cfg
        at_epoch_end = epoch_end and self.validates_at_epoch_end()
        if cfg.valid_every_steps and st.step % cfg.valid_every_steps == 0 and not at_epoch_end:
            self.run_validation()
        if cfg.checkpoint_every_steps and st.step % cfg.checkpoint_every_steps == 0 and not epoch_end:
            self.save()

    def end_epoch(self) -> None:
        st = self.state
        if self.window:
            self.log_window(lr_at(self.cfg, max(0, st.step - 1), self.total_steps), 0.0)
        if self.validates_at_epoch_end():
            self.run_validation(plot=True)
        st.epoch += 1
        st.batches_in_epoch = 0
        self.save()

    def run_validation(self, plot: bool = False) -> None:
        """Validate on rank 0 (the other ranks wait), record the best weights, plot, check the target."""
        st, d = self.state, self.ctx.d
        reached = torch.zeros(1)
        if d.is_main:
            m = validate(self.ctx.model, self.data.dev_set, self.data.tokenizer, self.cfg, d.device)
            self.last_dev = m
            log.info("validation step %d epoch %d: loss %.4f acc %.3f greedy WER %.2f%%", st.step, st.epoch,
                     m["loss"], m["acc"], 100 * m["wer"])
            self.metrics.add("dev", st.step, st.epoch, m)
            update_best(self.ctx.model, self.exp_config, st, m, self.exp_dir, self.cfg.keep_best)
            if plot and self.cfg.plots:
                plot_curves(self.metrics.rows, self.exp_dir / "plots" / "curves.png")
                plot_attention(self.ctx.model, self.data.dev_set,
                               self.exp_dir / "plots" / f"attention-epoch-{st.epoch + 1}.png", d.device)
            if m["wer"] <= self.cfg.target_wer:
                log.info("dev greedy WER %.2f%% reached train.target_wer; stopping", 100 * m["wer"])
                reached[0] = 1
        if d.enabled:
            reached = reached.to(d.device if d.device.type == "cuda" else "cpu")
            dist.broadcast(reached, 0)  # every rank must stop at the same step
        self.reached_target = bool(reached.item())


def _init_run(exp_config, d: Dist):
    cfg = exp_config.train
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    seed_everything(cfg.seed + d.rank)


def write_model_dirs(trainer: Trainer, exp_config, tokenizer, exp_dir: Path) -> tuple[Path, Path | None]:
    """Write ``exp/final`` (last weights) and ``exp/average`` (best ``average_n`` averaged, if > 1)."""
    final = ckpt.save_model_dir(exp_dir / "final", trainer.ctx.model, exp_config, tokenizer, exp_dir)
    best = trainer.state.best[: trainer.cfg.average_n]
    if trainer.cfg.average_n > 1 and len(best) > 1:
        state = ckpt.average_checkpoints([exp_dir / "best" / e["path"] for e in best])
        return final, ckpt.save_model_dir(exp_dir / "average", state, exp_config, tokenizer, exp_dir)
    return final, None


def train(exp_config, train_manifest, valid_manifest, tokenizer_path, exp_dir, resume: bool = False,
          cmvn_path=None) -> TrainResult:
    """Train a LAS model; see the module docstring. Returns a :class:`TrainResult`.

    ``exp_config``: :class:`asr.config.ExperimentConfig` (``model.vocab_size`` and ``model.n_mels`` are
    set from the tokenizer and features). ``resume=True`` continues from the newest intact checkpoint in
    ``exp_dir/checkpoints`` (an error if there is none).
    """
    from asr.tokenizer import Tokenizer

    exp_dir = Path(exp_dir)
    d = setup_distributed()
    tokenizer = Tokenizer.load(tokenizer_path)
    exp_config = _resolve_config(exp_config, tokenizer)
    _init_run(exp_config, d)
    handler = _setup_files(exp_dir, exp_config, tokenizer, d)
    try:
        return _train(exp_config, train_manifest, valid_manifest, tokenizer, exp_dir, resume, cmvn_path, d)
    finally:
        if handler is not None:
            logging.getLogger("asr").removeHandler(handler)
            handler.close()


def _remove_stale_temporaries(exp_dir: Path) -> None:
    # A kill during an atomic write leaves its hidden temporary file behind; nothing else uses them.
    for sub in ("checkpoints", "best", "final", "average"):
        for tmp in (exp_dir / sub).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _train(exp_config, train_manifest, valid_manifest, tokenizer, exp_dir, resume, cmvn_path, d) -> TrainResult:
    cfg = exp_config.train
    resume_from = None
    if resume:  # before any expensive set-up, so a missing checkpoint fails fast
        if d.is_main:
            _remove_stale_temporaries(exp_dir)
        resume_from = ckpt.newest_intact_checkpoint(exp_dir / "checkpoints")
        if resume_from is None:
            raise ConfigError(exp_dir / "checkpoints", "--resume given but no intact checkpoint found")
    data = build_data(exp_config, train_manifest, valid_manifest, tokenizer, d)
    if d.is_main:
        from asr.model_card import write_data_summary

        write_data_summary(exp_dir, train_manifest)
    if d.is_main and data.filtered:
        atomic_write_text(exp_dir / "filtered.tsv", "".join(f"{u}\t{r}\n" for u, r in data.filtered))
    mean, std = load_or_compute_cmvn(exp_config, data.train_set, exp_dir, cmvn_path, d)
    model = build_model(exp_config, mean, std, d)
    amp_dtype, scaler = _amp(cfg, d)
    ctx = StepContext(model, build_optimizer(model, cfg), cfg, d, amp_dtype, scaler)
    state = TrainState()
    if resume:
        state = restore_training_checkpoint(ctx, data, exp_config, resume_from)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters; %d training utterances, %d batches/epoch on rank %d of %d; device %s",
             n_params / 1e6, len(data.train_set), len(data.sampler), d.rank, d.world_size, d.device)
    metrics = MetricsLog(exp_dir, d.is_main, cfg.tensorboard, state.step if resume else None)
    trainer = Trainer(exp_config, data, ctx, state, exp_dir, metrics)
    model.train()
    try:
        trainer.run()
    finally:
        metrics.close()
    final, average = (exp_dir / "final", None)
    if d.is_main:
        final, average = write_model_dirs(trainer, exp_config, tokenizer, exp_dir)
        if trainer.failed:
            atomic_write_text(exp_dir / "failures.tsv", "".join(f"{u}\t{r}\n" for u, r in trainer.failed.items()))
        log.info("training done: %d steps, %d epochs; model folder %s", state.step, state.epoch, final)
    if d.enabled:
        dist.barrier()
    best = state.best[0] if state.best else {"loss": float("nan"), "wer": float("nan")}
    return TrainResult(exp_dir, final, average, state.step, state.epoch, trainer.last_train_loss,
                       float(best["loss"]), float(best["wer"]), state.nonfinite_total, state.skipped_batches,
                       len(data.filtered), len(trainer.failed), d.rank)


# -- averaging (asr average) -----------------------------------------------------------------------


def average_model(exp_dir, n: int, mode: str, out_dir) -> Path:
    """Write a model folder at ``out_dir`` averaging ``n`` checkpoints of ``exp_dir``.

    ``mode="best"``: the ``n`` best validations by dev loss (``exp/best``); ``mode="last"``: the ``n``
    newest training checkpoints (``exp/checkpoints``). Raises CheckpointError when there are none.
    """
    import json

    from asr.config import ExperimentConfig
    from asr.errors import CheckpointError
    from asr.tokenizer import Tokenizer

    exp_dir = Path(exp_dir)
    if mode == "best":
        try:
            best = json.loads((exp_dir / "best" / "best.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CheckpointError(exp_dir / "best" / "best.json", "no best-checkpoint list (train first)") from None
        paths = [exp_dir / "best" / e["path"] for e in sorted(best, key=lambda e: (e["loss"], e["wer"]))[:n]]
    elif mode == "last":
        paths = ckpt.list_checkpoints(exp_dir / "checkpoints")[-n:]
    else:
        raise ConfigError("--mode", f"must be best or last, got {mode!r}")
    if not paths:
        raise CheckpointError(exp_dir, f"no checkpoints to average for mode '{mode}'")
    if len(paths) < n:
        log.warning("only %d checkpoints available; averaging those", len(paths))
    sections = ckpt.load_checkpoint(paths[-1])["config"]
    exp_config = ExperimentConfig.from_sections(sections, where=str(paths[-1]))
    state = ckpt.average_checkpoints(paths)
    tokenizer = Tokenizer.load(exp_dir / "tokenizer.model")
    log.info("averaged %d checkpoints: %s", len(paths), ", ".join(p.name for p in paths))
    return ckpt.save_model_dir(out_dir, state, exp_config, tokenizer, exp_dir)
