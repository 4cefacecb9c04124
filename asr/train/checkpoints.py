"""Training checkpoints: save with rotation (newest ``keep_checkpoints``), restore, and the best-N weights."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from asr import checkpoint as ckpt
from asr.config import ExperimentConfig
from asr.errors import ConfigError
from asr.io_utils import atomic_write_text
from asr.train.data import Data
from asr.train.distributed import gather_rng
from asr.train.rng import set_rng_state
from asr.train.state import TrainState
from asr.train.step import StepContext

log = logging.getLogger(__name__)


def training_checkpoint(ctx: StepContext, data: Data, state: TrainState, exp_config: ExperimentConfig,
                        rngs: list) -> dict:
    """The full training state as a weights-only-loadable dict (``config`` is the resolved config)."""
    return {
        "model": ckpt.cpu_state_dict(ctx.model),
        "optimizer": ctx.optimizer.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else {},
        "sampler": data.sampler.state_dict(state.batches_in_epoch),
        "state": state.to_dict(),
        "rng": rngs,
        "config": exp_config.to_sections(),
    }


def save_training_checkpoint(ctx: StepContext, data: Data, state: TrainState, exp_config: ExperimentConfig,
                             exp_dir: Path) -> None:
    """Write ``checkpoints/ckpt-<step>.pt`` (rank 0) and delete all but the newest ``keep_checkpoints``."""
    rngs = gather_rng(ctx.d)  # collective: every rank takes part
    if not ctx.d.is_main:
        return
    folder = exp_dir / "checkpoints"
    path = folder / f"ckpt-{state.step}.pt"
    ckpt.save_checkpoint(path, training_checkpoint(ctx, data, state, exp_config, rngs))
    for old in ckpt.list_checkpoints(folder)[: -ctx.cfg.keep_checkpoints]:
        ckpt.remove_checkpoint(old)


def restore_training_checkpoint(ctx: StepContext, data: Data, exp_config: ExperimentConfig, path: Path) -> TrainState:
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


def update_best(model, exp_config: ExperimentConfig, state: TrainState, metrics: dict[str, float], exp_dir: Path,
                keep: int) -> bool:
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
        ckpt.remove_checkpoint(folder / e["path"])
    state.best = kept
    atomic_write_text(folder / "best.json", json.dumps(kept, indent=1) + "\n")
    return entry in kept


def remove_stale_temporaries(exp_dir: Path) -> None:
    """Delete the hidden temporary files a kill during an atomic write leaves behind (nothing else uses them)."""
    for sub in ("checkpoints", "best", "final"):
        for tmp in (exp_dir / sub).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
