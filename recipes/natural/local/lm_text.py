#!/usr/bin/env python
"""Text for the natural-sentence recipe's LM: every WordNet example sentence, normalised as the corpus
is, except those spoken in any evaluation set (read from the given manifests), so the LM never sees a
dev or test sentence. Prints how many sentences were kept and how many were excluded."""

import argparse
import sys
from pathlib import Path

from asr.data.manifest import read_manifest
from asr.data.synth_plan import WORDNET_DIR, wordnet_examples
from asr.errors import AsrError
from asr.io_utils import atomic_write_text
from asr.text import normalize_librispeech


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--exclude", type=Path, nargs="+", required=True, help="manifests whose sentences to leave out")
    p.add_argument("--out", type=Path, required=True, help="text file, one sentence per line")
    p.add_argument("--wordnet-dir", default=WORDNET_DIR)
    p.add_argument("--max-words", type=int, default=30, help="leave out longer sentences")
    args = p.parse_args()
    try:
        held = {u.text for m in args.exclude for u in read_manifest(m)}
        sentences = sorted({t for t in map(normalize_librispeech, wordnet_examples(args.wordnet_dir)) if t})
    except AsrError as e:
        print(f"lm_text.py: error: {e}", file=sys.stderr)
        return 2
    keep = [s for s in sentences if s not in held and len(s.split()) <= args.max_words]
    atomic_write_text(args.out, "\n".join(keep) + "\n")
    print(f"{args.out}: {len(keep)} sentences ({len(sentences) - len(keep)} left out: "
          f"{len(held)} evaluation sentences and those over {args.max_words} words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
