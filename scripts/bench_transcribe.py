"""Long-form transcription: real-time factor and peak RSS for a short and a long file.

Each file is made of synthetic utterances (flite, or the WAV files of ``--corpus``) joined by pauses of
0.3-2 s, and is transcribed by ``python -m asr transcribe`` in a fresh process whose peak RSS comes from
``os.wait4``. The long file is the peer of the short one: RSS(long) / RSS(short) shows whether memory
grows with the length of the input (target <= 1.2); RTF is transcription time / audio time (target <= 0.05
on 2 cores), from the JSON summary (model loading excluded) and from the process's wall time.

    python scripts/benchmark.py transcribe --model recipes/mini/exp/default/final --short-minutes 1 --long-minutes 30
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 16000
REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "please call stella and ask her to bring these things",
    "turn left at the next light and stop",
    "seven green apples fell from the tree",
    "she sells sea shells by the sea shore",
    "open the door and let the cat in",
    "my phone number is five five five one two",
    "we will meet at noon on monday",
    "yes", "no", "go up", "down left right",
    "the weather is cold and windy today",
    "read the first page of the book aloud",
    "a large dog ran across the field",
    "put the red box on the table",
]


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=Path, default=REPO / "recipes/mini/exp/default/final", help="model folder")
    parser.add_argument("--short-minutes", type=float, default=1.0)
    parser.add_argument("--long-minutes", type=float, default=30.0)
    parser.add_argument("--corpus", type=Path, default=None, help="folder of WAV utterances (default: flite)")
    parser.add_argument("--beam", type=int, default=1, help="beam size passed to asr transcribe")
    parser.add_argument("--ctc-weight", type=float, default=0.0,
                        help="CTC weight passed to asr transcribe (beam 1 with 0: greedy search)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads passed to asr transcribe")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep generated audio here (default: temp)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> dict:
    if not (args.model / "model.pt").is_file():
        raise SystemExit(f"bench_transcribe: no model at {args.model} (train one, or pass --model DIR)")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_transcribe_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pool = _utterance_pool(args.corpus, work / "pool")
        results = {}
        for name, minutes in (("short", args.short_minutes), ("long", args.long_minutes)):
            path = work / f"{name}.wav"
            duration = _write_long_file(path, pool, minutes * 60, np.random.default_rng(args.seed))
            results[name] = _measure(args, path, duration, work / f"out_{name}")
            r = results[name]
            print(f"{name:5s} {duration / 60:6.1f} min  RTF {r['rtf']:.4f} (wall {r['rtf_wall']:.4f})  "
                  f"peak RSS {r['max_rss_mb']:.0f} MB  segments {r['segments']}", flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    s, long = results["short"], results["long"]
    results["rss_ratio_long_vs_short"] = long["max_rss_mb"] / s["max_rss_mb"]
    results["rtf_ratio_long_vs_short"] = long["rtf"] / max(s["rtf"], 1e-9)
    print(f"RSS long / short = {results['rss_ratio_long_vs_short']:.3f} (target <= 1.2); "
          f"RTF long = {long['rtf']:.4f} (target <= 0.05), long / short = {results['rtf_ratio_long_vs_short']:.2f}")
    return results


def _utterance_pool(corpus: Path | None, folder: Path) -> list[np.ndarray]:
    """Utterances (samples,) float32 at 16 kHz: the corpus's WAVs, or SENTENCES spoken by flite."""
    from asr.audio import load_audio

    if corpus is not None:
        files = sorted(corpus.rglob("*.wav"))[:200]
        if not files:
            raise SystemExit(f"bench_transcribe: no .wav files under {corpus}")
        return [load_audio(f) for f in files]
    if shutil.which("flite") is None:
        raise SystemExit("bench_transcribe: flite is not installed; pass --corpus DIR")
    folder.mkdir(parents=True, exist_ok=True)
    pool = []
    for i, text in enumerate(SENTENCES):
        for voice in ("slt", "kal16"):
            path = folder / f"{i:02d}_{voice}.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, capture_output=True)
            pool.append(load_audio(path))
    return pool


def _write_long_file(path: Path, pool: list[np.ndarray], seconds: float, rng) -> float:
    """Write utterances from ``pool`` with 0.3-2 s pauses until ``seconds``, streaming to disk."""
    import soundfile as sf

    written = 0
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        while written < seconds * SR:
            utt = pool[int(rng.integers(len(pool)))]
            pause = np.zeros(int(rng.uniform(0.3, 2.0) * SR), np.float32)
            f.write(utt)
            f.write(pause)
            written += len(utt) + len(pause)
    return written / SR


def _measure(args, path: Path, duration: float, out: Path) -> dict:
    cmd = [sys.executable, "-m", "asr", "transcribe", "--model", str(args.model), str(path), "--format", "json",
           "--output-dir", str(out), "--beam", str(args.beam), "--ctc-weight", str(args.ctc_weight), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench_transcribe: {' '.join(cmd)} exited with {proc.returncode}")
    summary = json.loads((out / f"{path.stem}.json").read_text())["summary"]
    return {
        "audio_seconds": round(duration, 1),
        "segments": summary["segments"],
        "elapsed": summary["elapsed"],
        "rtf": summary["elapsed"] / duration,
        "wall": round(wall, 2),
        "rtf_wall": wall / duration,
        "max_rss_mb": usage.ru_maxrss / 1024,  # Linux reports kilobytes
    }


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    run(p.parse_args())
