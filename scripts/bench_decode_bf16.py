"""Decoding speed (real-time factor, one thread): greedy and beam search against pocketsphinx.

    python scripts/benchmark.py decode [--model recipes/mini/exp/default/final] [--clips a.flac b.wav ...]
                                       [--max-clips 20] [--beam N] [--ctc-weight W]

Every clip is decoded on its own (batch 1, as pocketsphinx does) with ``torch.set_num_threads(1)``:

1. greedy: log-mel + encoder + ``asr.decoding.search`` with beam 1 and CTC weight 0 (greedy search);
2. beam: log-mel + encoder + ``asr.decoding.search`` (DecodeOptions' beam 10, CTC weight 0.3 by default);
3. beam, batched: all clips in batches of 8, the way ``asr decode`` runs;
4. the same three in bf16 (``DecodeOptions(dtype="bf16")``: CPU autocast of encoder and search), when
   the CPU has bf16 units (avx512_bf16/amx_bf16), each reported as a ratio to its fp32 run;
5. peer: pocketsphinx with its bundled en-us model and default config.

RTF = wall-clock seconds / audio seconds (lower is faster). Ratios are ours / pocketsphinx. WERs on the
clips' transcripts (real-speech clips only; evaluation data, never tuned on) are printed alongside.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

REAL_SPEECH = Path("/work/shared/data/real-speech")
FSDD = Path("/work/shared/data/fsdd/recordings")


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=Path, default=Path("recipes/mini/exp/default/final"), help="model folder")
    parser.add_argument("--clips", type=Path, nargs="+", default=None,
                        help="audio files (default: real-speech clips, else FSDD recordings)")
    parser.add_argument("--max-clips", type=int, default=20, help="at most this many default clips")
    parser.add_argument("--beam", type=int, default=None, help="beam size (default: DecodeOptions)")
    parser.add_argument("--ctc-weight", type=float, default=None, help="CTC weight (default: DecodeOptions)")


def default_clips(max_clips: int) -> list[Path]:
    """Evenly spaced clips of the real-speech set (or FSDD when it is absent)."""
    for folder, pattern in ((REAL_SPEECH / "audio", "*.flac"), (FSDD, "*.wav")):
        found = sorted(folder.glob(pattern))
        if found:
            step = max(1, len(found) // max_clips)
            return found[::step][:max_clips]
    return []


def references() -> dict[str, str]:
    path = REAL_SPEECH / "transcript.tsv"
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as f:
        return {row["utt_id"]: row["text"] for row in csv.DictReader(f, delimiter="\t")}


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def decode_ours(rec, waves: list[np.ndarray], options, batch_size: int = 1) -> tuple[list[str], float]:
    """Decode waveforms in batches; returns (texts, wall seconds including features and encoder)."""
    # Batches of similar length, as `asr decode` forms them, so padding does not dominate.
    order = sorted(range(len(waves)), key=lambda i: -len(waves[i]))
    texts: list[str] = [""] * len(waves)
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        chunk = [waves[j] for j in idx]
        lengths = torch.tensor([len(w) for w in chunk])
        padded = torch.zeros(len(chunk), int(lengths.max()))
        for j, w in enumerate(chunk):
            padded[j, : len(w)] = torch.from_numpy(w)
        for j, nbest in zip(idx, rec.decode_batch(padded, lengths, options)):
            texts[j] = rec.tokenizer.decode(nbest[0].tokens)
    return texts, time.perf_counter() - start


def decode_pocketsphinx(waves: list[np.ndarray]) -> tuple[list[str], float]:
    from pocketsphinx import Decoder

    decoder = Decoder()  # bundled en-us acoustic model, 3-gram LM and dictionary
    texts = []
    start = time.perf_counter()
    for w in waves:
        pcm = (np.clip(w, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        texts.append(hyp.hypstr if hyp is not None else "")
    return texts, time.perf_counter() - start


def _wer(ids: list[str], texts: list[str], refs: dict[str, str]) -> float | None:
    from asr.scoring import score

    pairs = [(i, t) for i, t in zip(ids, texts) if i in refs]
    if not pairs:
        return None
    return score({i: refs[i] for i, _ in pairs}, dict(pairs)).wer


def run(args) -> dict:
    from asr.audio import load_audio
    from asr.config import replace
    from asr.decoding import DecodeOptions
    from asr.inference import Recognizer

    if not (args.model / "model.pt").exists():
        msg = (f"model folder {args.model} does not exist (or has no model.pt): train one first, e.g. "
               f"recipes/mini/run.sh, or pass --model DIR")
        print(msg)
        return {"error": msg}
    torch.set_num_threads(1)
    clips = args.clips or default_clips(args.max_clips)
    if not clips:
        print("no clips found: pass --clips")
        return {"error": "no clips"}
    rec = Recognizer.from_dir(args.model)
    waves = [load_audio(c, rec.sample_rate) for c in clips]
    audio_seconds = sum(len(w) for w in waves) / rec.sample_rate
    ids = [Path(c).name.split(".")[0] for c in clips]
    refs = references()
    greedy = DecodeOptions(beam_size=1, ctc_weight=0.0)
    given = {k: v for k, v in (("beam_size", args.beam), ("ctc_weight", args.ctc_weight)) if v is not None}
    beam = replace(DecodeOptions(), "bench flags", **given)
    from asr.config import replace
    from asr.ops import bf16_supported

    dtypes = ["fp32", "bf16"] if bf16_supported("cpu") else ["fp32"]
    runs = {}
    configs = [("greedy", greedy, 1), (f"beam{beam.beam_size}_ctc{beam.ctc_weight}", beam, 1),
               (f"beam{beam.beam_size}_ctc{beam.ctc_weight}_batch8", beam, 8)]
    for dtype in dtypes:
        decode_ours(rec, waves[:1], replace(greedy, "bench", dtype=dtype))  # warm-up: first-call allocations
    for name, options, batch in configs:
        for dtype in dtypes:  # fp32 and bf16 back to back, so load from other work falls on both alike
            key = name if dtype == "fp32" else f"{name}_bf16"
            runs[key] = decode_ours(rec, waves, replace(options, "bench", dtype=dtype), batch)
    runs["pocketsphinx"] = decode_pocketsphinx(waves)
    peer = runs["pocketsphinx"][1] / audio_seconds
    print(f"{len(clips)} clips, {audio_seconds:.1f} s of audio, model {args.model}, 1 thread")
    print(f"{'decoder':<28} {'RTF':>8} {'x pocketsphinx':>15} {'WER %':>7}")
    results: dict = {"clips": len(clips), "audio_seconds": round(audio_seconds, 2), "model": str(args.model)}
    for name, (texts, seconds) in runs.items():
        rtf = seconds / audio_seconds
        wer = _wer(ids, texts, refs)
        wer_text = f"{100 * wer:7.1f}" if wer is not None else "    n/a"
        print(f"{name:<28} {rtf:>8.4f} {rtf / peer:>15.2f} {wer_text}")
        results[name] = {"rtf": round(rtf, 5), "ratio_vs_pocketsphinx": round(rtf / peer, 3),
                         "wer": None if wer is None else round(wer, 4)}
        if name.endswith("_bf16"):
            fp32 = runs[name[: -len("_bf16")]][1]
            results[name]["speedup_vs_fp32"] = round(fp32 / seconds, 3)
            print(f"{'':<28} bf16 is {fp32 / seconds:.2f}x the speed of fp32 (same run)")
    return results


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    run(p.parse_args())
