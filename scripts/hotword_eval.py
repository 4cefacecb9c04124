"""Recall of hotwords with and without contextual biasing, and the overall WER change.

    python scripts/hotword_eval.py --model exp/final --manifest test.jsonl --train train.jsonl \
        [--max-train-count 2] [--weight 1.5] [--hotwords FILE]

The hotwords are the words of the test transcripts that the training text holds at most
``--max-train-count`` times (rare or absent in training), unless --hotwords gives a file. Each set is
decoded twice, without and with the ContextGraph of those words; recall is the share of reference
occurrences of a hotword that the hypothesis of that utterance contains, and WER is jiwer's over the set.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from confidence_eval import decode_with_confidence  # noqa: E402


def recall(pairs: list[tuple[str, str]], hotwords: set[str]) -> tuple[int, int]:
    """(found, total) reference occurrences of hotwords also in that utterance's hypothesis."""
    found = total = 0
    for ref, hyp in pairs:
        have = Counter(hyp.split())
        for w, n in Counter(x for x in ref.split() if x in hotwords).items():
            total += n
            found += min(n, have[w])
    return found, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("--train", type=Path, help="training manifest (to find words rare in training)")
    ap.add_argument("--hotwords", type=Path, help="hotwords file instead of the rare words")
    ap.add_argument("--max-train-count", type=int, default=2)
    ap.add_argument("--weight", type=float, default=1.5)
    ap.add_argument("--beam", type=int, default=None)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()

    import jiwer

    import asr
    from asr.context import ContextGraph, Hotword, read_hotwords
    from asr.data.manifest import read_manifest

    rec = asr.load_model(args.model)
    utts = read_manifest(args.manifest)[: args.limit or None]
    if args.hotwords:
        words = read_hotwords(args.hotwords, args.weight)
    else:
        if not args.train:
            ap.error("give --train (to pick rare words) or --hotwords")
        seen = Counter(w for u in read_manifest(args.train) for w in u.text.split())
        words = [Hotword(w, args.weight) for w in sorted({w for u in utts for w in u.text.split()})
                 if seen[w] <= args.max_train_count]
    vocab = {h.phrase.upper() for h in words}
    options = asr.DecodeOptions(**({} if args.beam is None else {"beam_size": args.beam}))
    graph = ContextGraph.from_hotwords(words, rec.tokenizer)
    refs = [u.text for u in utts]
    print(f"{len(words)} hotwords, {sum(r.split().count(w) for r in refs for w in vocab)} occurrences "
          f"in {len(utts)} utterances")
    print("| decoding | hotword recall | WER |\n|---|---|---|")
    for name, context in (("no biasing", None), (f"hotwords, weight {args.weight}", graph)):
        hyps = [" ".join(w for w, _ in words) for _, words in decode_with_confidence(rec, utts, options, context=context)]
        found, total = recall(list(zip(refs, hyps)), vocab)
        wer = jiwer.wer(refs, [h or "<empty>" for h in hyps])
        print(f"| {name} | {found}/{total} ({100 * found / max(total, 1):.1f}%) | {100 * wer:.2f}% |")


if __name__ == "__main__":
    main()
