#!/usr/bin/env python
"""Long fuzzing run of the four input paths: audio loader, manifest reader, config loader, tokenizer.

    python scripts/fuzz.py [--examples 5000]

Runs the hypothesis fuzz tests in ``tests/test_fuzz_*.py`` with ``--examples`` randomised cases per test
instead of CI's short fixed budget, and prints how many cases each target ran. Only the documented error
types (AudioError, ManifestError, ConfigError, TokenizerError) may come out; any other exception fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["audio", "manifest", "config", "tokenizer"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=5000, help="cases per fuzz test")
    p.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    args = p.parse_args()
    env = {**os.environ, "ASR_FUZZ_EXAMPLES": str(args.examples)}
    failed = 0
    for target in args.targets:
        path = REPO / "tests" / f"test_fuzz_{target}.py"
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(path)],
                           capture_output=True, text=True, env=env, cwd=REPO)
        lines = [ln for ln in r.stdout.splitlines() if " passed" in ln or " failed" in ln] or ["?"]
        summary = lines[-1].strip("= ")
        print(f"{target:10s} {args.examples} cases per fuzz test: {summary} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        if r.returncode != 0:
            failed += 1
            print(r.stdout[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
