#!/usr/bin/env python
"""Leave-one-speaker-out table: each fold's WER on its left-out speaker, the mean over folds and the
worst fold, from ``asr score``'s results.json of every ``loso-<speaker>`` split; written to
SCORE_DIR/../LOSO.md and printed. Other splits given are ignored. Exits 2 when a fold has no score."""

import argparse
import json
import sys
from pathlib import Path


def loso_table(folds: dict[str, dict]) -> str:
    """Markdown table of ``{speaker: results.json payload}``: one row per fold, then mean and worst."""
    lines = ["| left-out speaker | utts | WER % | CER % | sub | del | ins |", "|---|---:|---:|---:|---:|---:|---:|"]
    for spk, r in folds.items():
        lines.append(f"| {spk} | {r['num_utts']} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} | "
                     f"{r['substitutions']} | {r['deletions']} | {r['insertions']} |")
    wers = {spk: r["wer"] for spk, r in folds.items()}
    worst = max(wers, key=wers.get)
    lines.append(f"| **mean of {len(wers)} folds** | | **{100 * sum(wers.values()) / len(wers):.2f}** | | | | |")
    lines.append(f"| **worst ({worst})** | | **{100 * wers[worst]:.2f}** | | | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--score-dir", type=Path, required=True)
    p.add_argument("splits", nargs="+")
    args = p.parse_args()
    folds = {}
    for split in args.splits:
        if not split.startswith("loso-"):
            continue
        path = args.score_dir / split / "results.json"
        try:
            folds[split[len("loso-"):]] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            print(f"loso_table.py: error: {path}: cannot read the fold's score ({e.__class__.__name__})", file=sys.stderr)
            return 2
    if not folds:
        return 0
    table = loso_table(folds)
    (args.score_dir.parent / "LOSO.md").write_text(table, encoding="utf-8")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
