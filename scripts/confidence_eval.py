"""How well word confidence separates right from wrong words on a decoded set.

    python scripts/confidence_eval.py --model exp/final --manifest test.jsonl [--manifest ...] [--threshold 0.5]

Decodes each manifest (the model's default search, or --beam/--ctc-weight), takes each hypothesis
word's confidence (the minimum speller posterior of its pieces, as ``asr transcribe`` reports it),
aligns hypothesis to reference with jiwer, and prints one markdown row per manifest: words, mean
confidence of correct and of incorrect (substituted or inserted) words, the share of errors below the
threshold and the share of correct words below it (what flagging low confidence would cost).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.align import word_confidence, word_groups  # noqa: E402


def decode_with_confidence(rec, utts, options, batch_size=16, context=None):
    """[(ref, [(word, confidence)])] per utterance, in order."""
    from asr.audio import load_audio

    out = []
    for i in range(0, len(utts), batch_size):
        part = utts[i : i + batch_size]
        waves = [torch.from_numpy(load_audio(u.audio, rec.sample_rate, u.offset, u.duration if u.offset else None))
                 for u in part]
        lengths = torch.tensor([len(w) for w in waves])
        enc, enc_lengths, ctc = rec.encode_with_ctc(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths)
        hyps = [n[0] for n in rec.decode(enc, enc_lengths, options, context=context)]
        probs = rec.token_confidences(enc, enc_lengths, [h.tokens for h in hyps], ctc)
        for u, h, p in zip(part, hyps, probs):
            words = [(rec.tokenizer.decode([h.tokens[j] for j in g]).strip(), word_confidence(p[g]))
                     for g in word_groups(h.tokens, rec.tokenizer)]
            out.append((u.text, [(w, c) for w, c in words if w]))
    return out


def split_correct(ref: str, words: list[tuple[str, float]]) -> tuple[list[float], list[float]]:
    """Confidences of the hypothesis words jiwer aligns as equal, and of the substituted/inserted ones."""
    import jiwer

    hyp = " ".join(w for w, _ in words)
    if not ref.strip() or not hyp:
        return [], [c for _, c in words]
    correct, wrong = [], []
    for chunk in jiwer.process_words(ref, hyp).alignments[0]:
        for j in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
            (correct if chunk.type == "equal" else wrong).append(words[j][1])
    return correct, wrong


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--manifest", required=True, type=Path, action="append")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--beam", type=int, default=None)
    ap.add_argument("--ctc-weight", type=float, default=None)
    ap.add_argument("--limit", type=int, default=0, help="first N utterances of each manifest (0: all)")
    args = ap.parse_args()

    import asr
    from asr.data.manifest import read_manifest

    rec = asr.load_model(args.model)
    options = asr.DecodeOptions(**{k: v for k, v in (("beam_size", args.beam), ("ctc_weight", args.ctc_weight))
                                   if v is not None})
    print(f"| set | words | correct: mean conf | incorrect: mean conf | errors < {args.threshold} "
          f"| correct < {args.threshold} |")
    print("|---|---|---|---|---|---|")
    for manifest in args.manifest:
        utts = read_manifest(manifest)[: args.limit or None]
        correct, wrong = [], []
        for ref, words in decode_with_confidence(rec, utts, options):
            c, w = split_correct(ref, words)
            correct += c
            wrong += w
        c, w = np.array(correct), np.array(wrong)

        def mean(x):
            return f"{x.mean():.3f}" if x.size else "-"

        def below(x):
            return f"{(x < args.threshold).sum()}/{x.size} ({100 * (x < args.threshold).mean():.0f}%)" if x.size else "-"

        print(f"| {manifest.stem} | {c.size + w.size} | {mean(c)} | {mean(w)} | {below(w)} | {below(c)} |")


if __name__ == "__main__":
    main()
