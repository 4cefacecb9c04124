"""The mutable training state that a checkpoint restores, and what :func:`asr.train.train` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainState:
    """The mutable part of training that a checkpoint must restore."""

    step: int = 0  # optimizer updates done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of this epoch consumed (trained on or skipped)
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    skipped_batches: int = 0  # batches skipped for bad audio or OOM
    best: list[dict[str, float | int | str]] = field(default_factory=list)  # {"step", "loss", "wer", "path"}

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class TrainResult:
    """What :func:`asr.train.train` returns."""

    exp_dir: Path
    final_dir: Path
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
