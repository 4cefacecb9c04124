#!/usr/bin/env python
"""Concatenate manifests (e.g. train-clean-100 + train-clean-360 + train-other-500) into one."""

import argparse
import sys
from pathlib import Path

from asr.data.manifest import read_manifest, write_manifest
from asr.errors import AsrError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("manifests", type=Path, nargs="+")
    args = p.parse_args()
    try:
        utts = [u for m in args.manifests for u in read_manifest(m)]
        write_manifest(args.out, utts)
    except AsrError as e:
        print(f"combine.py: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(utts)} utterances from {len(args.manifests)} manifests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
