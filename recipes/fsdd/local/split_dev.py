#!/usr/bin/env python
"""Hold out a dev set from FSDD training utterances: the takes given by --dev-takes of every speaker
and digit, so dev is as balanced as the official test split. The test takes are never touched."""

import argparse
import sys
from pathlib import Path

from asr.data.manifest import read_manifest, write_manifest
from asr.errors import AsrError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--in", dest="src", type=Path, required=True, help="training manifest")
    p.add_argument("--train-out", type=Path, required=True)
    p.add_argument("--dev-out", type=Path, required=True)
    p.add_argument("--dev-takes", default="45-49", help="inclusive range of take numbers")
    args = p.parse_args()
    lo, hi = (int(x) for x in args.dev_takes.split("-"))
    try:
        utts = read_manifest(args.src)
    except AsrError as e:
        print(f"split_dev.py: error: {e}", file=sys.stderr)
        return 2
    # FSDD file names are {digit}_{speaker}_{take}.wav.
    def take(u):
        return int(Path(u.audio).stem.rsplit("_", 1)[1])

    dev = [u for u in utts if lo <= take(u) <= hi]
    train = [u for u in utts if not lo <= take(u) <= hi]
    write_manifest(args.train_out, train)
    write_manifest(args.dev_out, dev)
    print(f"{args.src}: {len(train)} train, {len(dev)} dev (takes {lo}-{hi})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
