"""The training loop: one function, :func:`fit`, reading top to bottom (nanoGPT style).

:func:`train` sets the run up (data, CMVN, model, optimizer, a resumed state) and calls :func:`fit`,
whose loop over epochs and batches calls small named steps: :func:`train_step` (forward/backward of
one micro-batch), :func:`apply_update` (the optimizer step at :func:`get_lr`), :func:`maybe_validate`,
:func:`maybe_checkpoint` and :func:`end_epoch`. :class:`Run` holds the objects of one run.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from dataclasses import replace as replace_fields
from pathlib import Path

import torch

from asr import checkpoint as ckpt
from asr.config import ExperimentConfig
from asr.errors import ConfigError, TrainingDivergedError
from asr.io_utils import atomic_write_text
from asr.model_card import write_data_summary
from asr.specaugment import set_step as set_specaug_step
from asr.train.checkpoints import (
    remove_stale_temporaries,
    restore_training_checkpoint,
    save_training_checkpoint,
    update_best,
)
from asr.train.config import TrainConfig
from asr.train.data import Data, build_data, build_model, load_or_compute_cmvn
from asr.train.distributed import (
    Dist,
    all_ranks_true,
    all_reduce_grads,
    barrier,
    broadcast_flag,
    global_count,
    setup_distributed,
)
from asr.train.metrics import MetricsLog, mean_window, plot_attention, plot_curves
from asr.train.rng import rng_neutral_iter, seed_everything
from asr.train.schedule import get_lr
from asr.train.state import TrainResult, TrainState
from asr.train.step import (
    StepContext,
    amp_setup,
    build_optimizer,
    forward_backward_guarded,
    optimizer_step,
)
from asr.train.validate import validate

log = logging.getLogger(__name__)


@dataclass
class Run:
    """The objects of one training run, and the bookkeeping between updates."""

    exp_config: ExperimentConfig
    data: Data
    ctx: StepContext
    state: TrainState
    exp_dir: Path
    metrics: MetricsLog
    window: list[dict[str, float]] = field(default_factory=list)  # micro-batch stats since the last log line
    last_train_loss: float = float("nan")
    saved_step: int = -1  # step of the newest checkpoint written
    failed: dict[str, str] = field(default_factory=dict)  # utterance id -> why it could not be loaded
    synced: bool = False  # whether DDP all-reduced the gradients of the pending update
    reached_target: bool = False  # dev WER reached cfg.target_wer

    @property
    def cfg(self) -> TrainConfig:
        return self.exp_config.train

    @property
    def total_steps(self) -> int:
        # From epoch 0's plan, so that a resumed run computes the same (cosine) schedule.
        return self.cfg.max_steps or self.cfg.max_epochs * math.ceil(self.data.batches_per_epoch / self.cfg.accum_grad)


def fit(run: Run) -> None:
    """Train until ``max_epochs``, ``max_steps`` or ``target_wer``; checkpoint at the end."""
    st, cfg = run.state, run.cfg
    while not finished(run):
        run.data.sampler.set_epoch(st.epoch)
        remaining = len(run.data.sampler)  # after a mid-epoch resume: the batches still to come
        epoch_total = st.batches_in_epoch + remaining
        bar = _progress(epoch_total, st.batches_in_epoch, run.ctx.d)
        pending = 0  # micro-batches accumulated since the last update
        micro = min(cfg.accum_grad, remaining)  # micro-batches in this update
        t0 = time.perf_counter()
        for i, batch in enumerate(rng_neutral_iter(run.data.loader)):
            st.batches_in_epoch += 1
            bar.update(1)
            last_of_epoch = i == remaining - 1
            pending += 1
            train_step(run, batch, micro, sync=pending == micro or last_of_epoch)
            if pending < micro and not last_of_epoch:
                continue
            apply_update(run, time.perf_counter() - t0)
            pending, micro = 0, min(cfg.accum_grad, remaining - i - 1)
            bar.set_postfix(loss=f"{run.last_train_loss:.3f}", step=st.step)
            maybe_validate(run, epoch_end=last_of_epoch)
            maybe_checkpoint(run, epoch_end=last_of_epoch)
            t0 = time.perf_counter()
            if finished(run):
                break
        bar.close()
        if st.batches_in_epoch == epoch_total:
            end_epoch(run)
    if run.saved_step != st.step:
        save(run)  # a run stopped by max_steps can be resumed later with a larger limit


def finished(run: Run) -> bool:
    st, cfg = run.state, run.cfg
    return run.reached_target or st.epoch >= cfg.max_epochs or 0 < cfg.max_steps <= st.step


def train_step(run: Run, batch, micro: int, sync: bool) -> dict[str, float] | None:
    """Forward/backward one micro-batch of an update of ``micro``; skip (and count) an empty, OOM or
    non-finite one. ``sync``: this micro-batch ends the update, so DDP all-reduces its gradients."""
    st, d = run.state, run.ctx.d
    for uid, reason in batch.failed:
        if uid not in run.failed:
            log.warning("skipped unreadable utterance %s: %s", uid, reason)
        run.failed[uid] = reason
    # Under DDP every rank must run the same collectives, so a batch empty on any rank is skipped by all.
    if not all_ranks_true(len(batch) > 0, d):
        st.skipped_batches += 1
        return None
    weight = d.world_size * len(batch) / global_count(len(batch), d) / micro
    set_specaug_step(run.ctx.model, st.step)  # the SpecAugment schedule
    stats = forward_backward_guarded(run.ctx, batch, weight, sync)
    run.synced = run.synced or (sync and stats is not None and stats != "oom")
    if stats == "oom":
        st.skipped_batches += 1
        return None
    if stats is None:
        count_nonfinite(run, f"non-finite loss on batch {batch.ids[:3]}...")
        return None
    run.window.append(stats)
    return stats


def count_nonfinite(run: Run, what: str) -> None:
    """Count a skipped non-finite step; raise TrainingDivergedError after ``max_nonfinite`` in a row."""
    st = run.state
    st.nonfinite_in_row += 1
    st.nonfinite_total += 1
    log.warning("step %d: %s; skipped (%d in a row, %d in total)", st.step, what, st.nonfinite_in_row,
                st.nonfinite_total)
    if st.nonfinite_in_row >= run.cfg.max_nonfinite:
        raise TrainingDivergedError(
            run.exp_dir, f"{st.nonfinite_in_row} non-finite losses/gradients in a row at step {st.step}; "
            "lower train.lr, enable train.grad_clip or check the data")


def apply_update(run: Run, seconds: float) -> None:
    """Apply the accumulated gradients (or skip a non-finite update) and log the window."""
    st, ctx = run.state, run.ctx
    if not any(p.grad is not None for p in ctx.model.parameters()):
        return  # every micro-batch was skipped; the guard already counted them
    if ctx.d.enabled and not run.synced:
        all_reduce_grads(ctx.model, ctx.d)
    run.synced = False
    lr = get_lr(run.cfg, st.step, run.total_steps)
    if optimizer_step(ctx, lr) is None:
        count_nonfinite(run, "non-finite gradient")
        return
    st.nonfinite_in_row = 0
    st.step += 1
    if run.window and st.step % run.cfg.log_every == 0:
        log_window(run, lr, seconds)


def log_window(run: Run, lr: float, seconds: float) -> None:
    st = run.state
    mean = mean_window(run.window)
    run.last_train_loss = mean["loss"]
    log.info("step %d epoch %d loss %.4f (att %.4f ctc %.4f) acc %.3f lr %.2e", st.step, st.epoch,
             mean["loss"], mean["att_loss"], mean["ctc_loss"], mean["acc"], lr)
    run.metrics.add("train", st.step, st.epoch, {**mean, "lr": lr, "seconds": seconds})
    run.window = []


def _validates_at_epoch_end(run: Run) -> bool:
    return run.cfg.valid_every_epochs > 0 and (run.state.epoch + 1) % run.cfg.valid_every_epochs == 0


def maybe_validate(run: Run, epoch_end: bool) -> None:
    """Validate every ``valid_every_steps`` updates (the epoch end validates on its own)."""
    every = run.cfg.valid_every_steps
    if every and run.state.step % every == 0 and not (epoch_end and _validates_at_epoch_end(run)):
        run_validation(run)


def maybe_checkpoint(run: Run, epoch_end: bool) -> None:
    """Checkpoint every ``checkpoint_every_steps`` updates (the epoch end checkpoints on its own)."""
    every = run.cfg.checkpoint_every_steps
    if every and run.state.step % every == 0 and not epoch_end:
        save(run)


def end_epoch(run: Run) -> None:
    st = run.state
    if run.window:
        log_window(run, get_lr(run.cfg, max(0, st.step - 1), run.total_steps), 0.0)
    if _validates_at_epoch_end(run):
        run_validation(run, plot=True)
    st.epoch += 1
    st.batches_in_epoch = 0
    save(run)


def save(run: Run) -> None:
    save_training_checkpoint(run.ctx, run.data, run.state, run.exp_config, run.exp_dir)
    run.saved_step = run.state.step


def run_validation(run: Run, plot: bool = False) -> None:
    """Validate on rank 0 (the other ranks wait), record the best weights, plot, check the target."""
    st, d, cfg = run.state, run.ctx.d, run.cfg
    reached = False
    if d.is_main:
        m = validate(run.ctx.model, run.data.dev_set, run.data.tokenizer, cfg, d.device)
        log.info("validation step %d epoch %d: loss %.4f acc %.3f greedy WER %.2f%%", st.step, st.epoch,
                 m["loss"], m["acc"], 100 * m["wer"])
        run.metrics.add("dev", st.step, st.epoch, m)
        update_best(run.ctx.model, run.exp_config, st, m, run.exp_dir, cfg.keep_best)
        if plot and cfg.plots:
            plot_curves(run.metrics.rows, run.exp_dir / "plots" / "curves.png")
            plot_attention(run.ctx.model, run.data.dev_set,
                           run.exp_dir / "plots" / f"attention-epoch-{st.epoch + 1}.png", d.device)
        if m["wer"] <= cfg.target_wer:
            log.info("dev greedy WER %.2f%% reached train.target_wer; stopping", 100 * m["wer"])
            reached = True
    run.reached_target = broadcast_flag(reached, d)  # every rank must stop at the same step


# -- set-up -----------------------------------------------------------------------------------------


def train(exp_config: ExperimentConfig, train_manifest, valid_manifest, tokenizer_path, exp_dir,
          resume: bool = False, cmvn_path=None) -> TrainResult:
    """Train a LAS model and write ``exp_dir`` (layout in :mod:`asr.checkpoint`); return a :class:`TrainResult`.

    ``exp_config``: ``model.vocab_size`` and ``model.n_mels`` are set from the tokenizer and features.
    ``resume=True`` continues from the newest intact checkpoint in ``exp_dir/checkpoints`` (an error if
    there is none) with the same batches, dropout and SpecAugment masks as an uninterrupted run. Under
    torchrun each rank trains on its share of the batches and only rank 0 writes files. Averaging is
    not done here: ``asr average`` (:func:`asr.checkpoint.average_model`) does it.
    """
    from asr.tokenizer import Tokenizer

    exp_dir = Path(exp_dir)
    d = setup_distributed()
    tokenizer = Tokenizer.load(tokenizer_path)
    exp_config = _resolve_config(exp_config, tokenizer)
    _init_torch(exp_config.train, d)
    handler = _setup_files(exp_dir, exp_config, tokenizer, d)
    try:
        return _train(exp_config, train_manifest, valid_manifest, tokenizer, exp_dir, resume, cmvn_path, d)
    finally:
        if handler is not None:
            logging.getLogger("asr").removeHandler(handler)
            handler.close()


def _train(exp_config: ExperimentConfig, train_manifest, valid_manifest, tokenizer, exp_dir: Path, resume: bool,
           cmvn_path, d: Dist) -> TrainResult:
    cfg = exp_config.train
    resume_from = None
    if resume:  # before any expensive set-up, so a missing checkpoint fails fast
        if d.is_main:
            remove_stale_temporaries(exp_dir)
        resume_from = ckpt.newest_intact_checkpoint(exp_dir / "checkpoints")
        if resume_from is None:
            raise ConfigError(exp_dir / "checkpoints", "--resume given but no intact checkpoint found")
    data = build_data(exp_config, train_manifest, valid_manifest, tokenizer, d)
    if d.is_main:
        write_data_summary(exp_dir, train_manifest)
    if d.is_main and data.filtered:
        atomic_write_text(exp_dir / "filtered.tsv", "".join(f"{u}\t{r}\n" for u, r in data.filtered))
    mean, std = load_or_compute_cmvn(exp_config, data.train_set, exp_dir, cmvn_path, d)
    model = build_model(exp_config, mean, std, d)
    ctx = StepContext(model, build_optimizer(model, cfg), cfg, d, *amp_setup(cfg, d))
    state = restore_training_checkpoint(ctx, data, exp_config, resume_from) if resume_from else TrainState()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters; %d training utterances, %d batches/epoch on rank %d of %d; device %s",
             n_params / 1e6, len(data.train_set), len(data.sampler), d.rank, d.world_size, d.device)
    metrics = MetricsLog(exp_dir, d.is_main, cfg.tensorboard, state.step if resume else None)
    run = Run(exp_config, data, ctx, state, exp_dir, metrics, saved_step=state.step if state.step else -1)
    model.train()
    try:
        fit(run)
    finally:
        metrics.close()
    final = exp_dir / "final"
    if d.is_main:
        ckpt.save_model_dir(final, model, exp_config, tokenizer, exp_dir)
        if run.failed:
            atomic_write_text(exp_dir / "failures.tsv", "".join(f"{u}\t{r}\n" for u, r in run.failed.items()))
        log.info("training done: %d steps, %d epochs; model folder %s", state.step, state.epoch, final)
    barrier(d)
    best = state.best[0] if state.best else {"loss": float("nan"), "wer": float("nan")}
    return TrainResult(exp_dir, final, state.step, state.epoch, run.last_train_loss, float(best["loss"]),
                       float(best["wer"]), state.nonfinite_total, state.skipped_batches, len(data.filtered),
                       len(run.failed), d.rank)


def _init_torch(cfg: TrainConfig, d: Dist) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    seed_everything(cfg.seed + d.rank)


def _setup_files(exp_dir: Path, exp_config: ExperimentConfig, tokenizer, d: Dist) -> logging.Handler | None:
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


def _resolve_config(exp_config: ExperimentConfig, tokenizer) -> ExperimentConfig:
    from asr.config import replace

    model_cfg = replace(exp_config.model, "model", vocab_size=tokenizer.vocab_size, n_mels=exp_config.features.n_mels)
    return replace_fields(exp_config, model=model_cfg)


def _progress(total: int, initial: int, d: Dist):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not d.is_main or not sys.stderr.isatty(),
                unit="batch", dynamic_ncols=True, leave=False)
