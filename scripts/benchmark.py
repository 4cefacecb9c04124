#!/usr/bin/env python
"""Benchmarks, each against a named peer measured in the same run, reported as ratios.

    python scripts/benchmark.py frontend|data|train|lstm|decode|transcribe|serve|all [options]

Each section lives in ``scripts/bench_<section>.py`` with ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

SECTIONS = ["frontend", "data", "train", "lstm", "decode", "transcribe", "serve"]


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True)
    modules = {}
    for name in SECTIONS:
        try:
            mod = importlib.import_module(f"bench_{name}")
        except ModuleNotFoundError as e:
            if e.name != f"bench_{name}":
                raise
            continue
        modules[name] = mod
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        p.add_argument("--json", type=Path, help="also write the results here")
        mod.add_arguments(p)
    p_all = sub.add_parser("all", help="every section with its defaults")
    p_all.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    names = list(modules) if args.section == "all" else [args.section]
    results = {}
    for name in names:
        if args.section == "all":
            p = argparse.ArgumentParser()
            modules[name].add_arguments(p)
            section_args = p.parse_args([])
        else:
            section_args = args
        print(f"== {name} ==", flush=True)
        results[name] = modules[name].run(section_args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
