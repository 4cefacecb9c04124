"""Training metrics: ``metrics.csv``, TensorBoard scalars, and PNG plots (learning curves, attention)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from asr import checkpoint as ckpt

log = logging.getLogger(__name__)

METRIC_FIELDS = ["step", "epoch", "split", "loss", "att_loss", "ctc_loss", "acc", "wer", "lr", "seconds"]


class MetricsLog:
    """metrics.csv (and TensorBoard scalars when available), written by rank 0 only."""

    def __init__(self, exp_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = exp_dir / "metrics.csv"
        self.rows: list[dict[str, str | int]] = []
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
        """Append one row (``split`` is "train" or "dev") to the CSV and TensorBoard."""
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


def mean_window(window: list[dict[str, float]]) -> dict[str, float]:
    """Utterance-weighted mean loss terms and token accuracy of the micro-batch stats in ``window``."""
    n = sum(s["utts"] for s in window)
    mean = {k: sum(s[k] * s["utts"] for s in window) / n for k in ("loss", "att_loss", "ctc_loss")}
    mean["acc"] = sum(s["n_correct"] for s in window) / max(1.0, sum(s["n_tokens"] for s in window))
    return mean


def plot_curves(rows: list[dict[str, str]], path: Path) -> None:
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
