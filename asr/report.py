"""The results table a recipe prints at its end, built from the score stage's ``results.json`` files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

from asr.errors import DataError


def git_commit(cwd: str | Path | None = None) -> str:
    """Short hash of the checkout's HEAD, with ``-dirty`` when it has uncommitted changes."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=cwd, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=cwd, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine_description() -> str:
    """e.g. ``x86_64, 2 cores, torch 2.13.0+cpu``."""
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def _stage_time(exp_dir: Path, stage: int) -> str:
    marker = exp_dir / ".done" / f"stage-{stage}.done"
    if marker.exists():
        return marker.read_text().strip().split(" in ")[-1]
    return "n/a"


def precision_description(config: str = "") -> str:
    """e.g. ``fp32 (train.amp: none; CPU bf16 units: amx_bf16, avx512_bf16)``: how the config trains here."""
    from asr import ops
    from asr.config import load_yaml_sections
    from asr.errors import ConfigError
    from asr.train.config import TrainConfig

    mode = TrainConfig().amp
    if config:
        try:
            mode = str(load_yaml_sections(config).get("train", {}).get("amp", mode))
        except ConfigError:
            pass  # the table still gets written; the config line names the file
    dtype = ops.amp_dtype(mode, "cpu") if mode != "fp16" else None
    units = ", ".join(sorted(ops.cpu_bf16_flags())) or "none"
    return f"{'bf16' if dtype is not None else 'fp32'} (train.amp: {mode}; CPU bf16 units: {units})"


def results_table(exp_dir: str | Path, sets: Sequence[str], config: str = "") -> str:
    """Return a Markdown WER/CER table for ``exp_dir/score/<set>/results.json``, with provenance lines."""
    exp_dir = Path(exp_dir)
    rows = ["| set | utts | words | WER % | CER % | sub | del | ins |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in sets:
        path = exp_dir / "score" / name / "results.json"
        try:
            r = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(path, "missing; run the score stage first") from None
        rows.append(
            f"| {name} | {r['num_utts']} | {r['num_words']} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} "
            f"| {r['substitutions']} | {r['deletions']} | {r['insertions']} |"
        )
    lines = rows + [
        "",
        f"- commit: {git_commit()}",
        f"- config: {config}",
        f"- training time: {_stage_time(exp_dir, 4)}; whole recipe stages: "
        + ", ".join(f"{s}: {_stage_time(exp_dir, s)}" for s in range(8)),
        f"- precision: {precision_description(config)}",
        f"- machine: {machine_description()}",
    ]
    return "\n".join(lines) + "\n"
