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
        f"- machine: {machine_description()}",
    ]
    return "\n".join(lines) + "\n"
