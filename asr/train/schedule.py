"""Learning-rate schedule: a pure function of the step, so a resumed run needs no schedule state."""

from __future__ import annotations

import math

from asr.train.config import TrainConfig


def get_lr(cfg: TrainConfig, step: int, total_steps: int) -> float:
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
