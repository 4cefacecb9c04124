"""Decoding speed (real-time factor, one thread) per backend, against pocketsphinx in the same run.

    python scripts/benchmark.py decode [--model recipes/mini/exp/default/final] [--backend torch,torch-bf16,onnx,onnx-int8]
                                       [--manifest recipes/mini/data/default/manifests/test.jsonl]
                                       [--clips a.flac b.wav ...] [--max-clips 20] [--beam N] [--ctc-weight W]

Backends: ``torch`` (the model folder), ``torch-bf16`` (the same under CPU bf16 autocast,
``DecodeOptions(dtype="bf16")``; left out with a note where the CPU has no bf16 units), ``onnx`` and ``onnx-int8`` (the model exported by ``asr export``
into a temporary folder, fp32 and with ``--quantize int8``, run on onnxruntime). Each backend runs in its
own process (so its peak RSS is its own, and the onnx ones never import torch), one after another,
with one CPU thread. For every backend, on the same clips:

1. greedy: frontend + listener + ``asr.decoding.search`` with beam 1 and CTC weight 0, one clip at a time;
2. beam: the same with beam 10 and CTC weight 0.3 (DecodeOptions' defaults), one clip at a time;
3. beam, batched: all clips in batches of 8 (similar lengths together), the way ``asr decode`` runs;
4. peer: pocketsphinx with its bundled en-us model and default config, one clip at a time.

The search is the same code for every backend. RTF = wall-clock seconds / audio seconds (lower is
faster); ratios are against the first backend (torch fp32 by default: so torch-bf16's is bf16 / fp32) and against pocketsphinx. WER is the beam run's, on the clips'
transcripts: ``--manifest`` clips (e.g. the mini test set) or real-speech clips. Install size is the
on-disk size of the installed distributions each backend needs (the package and its requirements).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REAL_SPEECH = Path("/work/shared/data/real-speech")
FSDD = Path("/work/shared/data/fsdd/recordings")
BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")
# What each backend imports at run time (beyond this package); the onnx set is the `asr[onnx]` extra.
RUNTIME = {"torch": ["torch", "numpy", "soundfile", "sentencepiece"],
           "onnx": ["onnxruntime", "numpy", "soundfile", "sentencepiece"]}


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=Path, default=Path("recipes/mini/exp/default/final"), help="model folder")
    parser.add_argument("--backend", default="torch,torch-bf16,onnx,onnx-int8",
                        help="comma list of torch, torch-bf16 (torch under CPU bf16 autocast, where the CPU has "
                        "bf16 units), onnx, onnx-int8")
    parser.add_argument("--manifest", type=Path, default=None, help="clips and references from a manifest")
    parser.add_argument("--clips", type=Path, nargs="+", default=None,
                        help="audio files (default: --manifest, else real-speech clips, else FSDD recordings)")
    parser.add_argument("--max-clips", type=int, default=20, help="at most this many clips (evenly spaced)")
    parser.add_argument("--beam", type=int, default=None, help="beam size (default: DecodeOptions)")
    parser.add_argument("--ctc-weight", type=float, default=None, help="CTC weight (default: DecodeOptions)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one backend in a child process


def _spaced(items: list, n: int) -> list:
    step = max(1, len(items) // max(n, 1))
    return items[::step][:n]


def load_clips(args) -> tuple[list[str], list[str], dict[str, str]]:
    """(ids, audio paths, references by id) from --clips, --manifest, or the default evaluation clips."""
    if args.clips:
        return [Path(c).name.split(".")[0] for c in args.clips], [str(c) for c in args.clips], {}
    if args.manifest:
        from asr.data.manifest import read_manifest

        utts = _spaced(read_manifest(args.manifest), args.max_clips)
        return [u.id for u in utts], [u.audio for u in utts], {u.id: u.text for u in utts}
    for folder, pattern in ((REAL_SPEECH / "audio", "*.flac"), (FSDD, "*.wav")):
        found = _spaced(sorted(folder.glob(pattern)), args.max_clips)
        if found:
            return [p.name.split(".")[0] for p in found], [str(p) for p in found], real_speech_references()
    return [], [], {}


def real_speech_references() -> dict[str, str]:
    path = REAL_SPEECH / "transcript.tsv"
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as f:
        return {row["utt_id"]: row["text"] for row in csv.DictReader(f, delimiter="\t")}


def decode_ours(rec, waves: list[np.ndarray], options, batch_size: int = 1) -> tuple[list[str], float]:
    """Decode waveforms in batches; returns (texts, wall seconds including features and encoder)."""
    from asr.transcribe import _pad

    # Batches of similar length, as `asr decode` forms them, so padding does not dominate.
    order = sorted(range(len(waves)), key=lambda i: -len(waves[i]))
    texts: list[str] = [""] * len(waves)
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        for j, nbest in zip(idx, rec.decode_batch(*_pad([waves[j] for j in idx]), options)):
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


def _options(args):
    from asr.config import replace
    from asr.decoding import DecodeOptions

    given = {k: v for k, v in (("beam_size", args.beam), ("ctc_weight", args.ctc_weight)) if v is not None}
    return DecodeOptions(beam_size=1, ctc_weight=0.0), replace(DecodeOptions(), "bench flags", **given)


def worker(args) -> dict:
    """One backend (or pocketsphinx) in this process: the timed runs, texts and peak RSS, as JSON."""
    from asr.audio import load_audio

    ids, paths, _ = load_clips(args)
    if args.worker == "pocketsphinx":
        waves = [load_audio(p, 16000) for p in paths]
        runs = {"beam": decode_pocketsphinx(waves)}
    else:
        from asr.inference import Recognizer

        backend = "torch" if args.worker.startswith("torch") else "onnx"
        if backend == "torch":
            import torch

            torch.set_num_threads(1)
        rec = Recognizer.from_dir(args.model, backend=backend, threads=1)
        waves = [load_audio(p, rec.sample_rate) for p in paths]
        greedy, beam = _options(args)
        if args.worker == "torch-bf16":  # encoder and search under CPU bf16 autocast (DecodeOptions.dtype)
            greedy, beam = dataclasses.replace(greedy, dtype="bf16"), dataclasses.replace(beam, dtype="bf16")
        decode_ours(rec, waves[:1], greedy)  # warm-up: first-call allocations and lazy imports
        runs = {"greedy": decode_ours(rec, waves, greedy), "beam": decode_ours(rec, waves, beam),
                "beam_batch8": decode_ours(rec, waves, beam, 8)}
    return {"runs": {k: {"texts": t, "seconds": s} for k, (t, s) in runs.items()},
            "max_rss_mb": _peak_rss_mb(), "torch_loaded": "torch" in sys.modules}


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike getrusage's ru_maxrss it does not carry the parent's
    peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def install_size_mb(names: list[str]) -> float:
    """On-disk size of the installed distributions ``names`` and everything they require (no extras)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    total = 0
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        total += sum(f.size or 0 for f in dist.files or [] if f.size)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return total / 2**20


def _export(model: Path, out: Path, quantize: str) -> float:
    from asr.export import ExportConfig, export_model

    start = time.perf_counter()
    export_model(model, out, ExportConfig(quantize=quantize))
    return time.perf_counter() - start


def _run_worker(args, name: str, model: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--model", str(model), "--max-clips", str(args.max_clips)]
    for flag, value in (("--manifest", args.manifest), ("--beam", args.beam), ("--ctc-weight", args.ctc_weight)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.clips:
        cmd += ["--clips", *map(str, args.clips)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{name} worker failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        return {"error": f"unknown backend {sorted(unknown)[0]} (one of {', '.join(BACKENDS)})"}
    if not (args.model / "model.pt").exists():
        msg = (f"model folder {args.model} does not exist (or has no model.pt): train one first, e.g. "
               f"recipes/mini/run.sh, or pass --model DIR")
        print(msg)
        return {"error": msg}
    if "torch-bf16" in backends:
        from asr.ops import bf16_supported

        if not bf16_supported("cpu"):
            print("torch-bf16 left out: this CPU has no bf16 units (avx512_bf16 / amx_bf16)")
            backends.remove("torch-bf16")
    ids, paths, refs = load_clips(args)
    if not paths:
        print("no clips found: pass --clips or --manifest")
        return {"error": "no clips"}
    import soundfile as sf

    audio_seconds = sum(sf.info(p).duration for p in paths)
    _, beam = _options(args)
    results: dict = {"clips": len(paths), "audio_seconds": round(audio_seconds, 2), "model": str(args.model),
                     "beam": beam.beam_size, "ctc_weight": beam.ctc_weight, "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"torch": args.model, "torch-bf16": args.model}
        for name, quantize in (("onnx", "none"), ("onnx-int8", "int8")):
            if name in backends:
                folders[name] = Path(tmp) / name
                results[f"export_seconds_{name}"] = round(_export(args.model, folders[name], quantize), 2)
        workers = {name: _run_worker(args, name, folders[name]) for name in backends}
        workers["pocketsphinx"] = _run_worker(args, "pocketsphinx", args.model)
        onnx_bytes = {n: sum(f.stat().st_size for f in folders[n].iterdir()) for n in backends if n != "torch"}
    results["install_mb"] = {"torch": round(install_size_mb(RUNTIME["torch"]), 1),
                             "onnx": round(install_size_mb(RUNTIME["onnx"]), 1)}
    base = workers[backends[0]]["runs"]
    peer = workers["pocketsphinx"]["runs"]["beam"]["seconds"] / audio_seconds
    print(f"{len(paths)} clips, {audio_seconds:.1f} s of audio, model {args.model}, 1 thread, "
          f"beam {beam.beam_size} + CTC {beam.ctc_weight}")
    print(f"{'backend':<14} {'run':<12} {'RTF':>8} {'x ' + backends[0]:>10} {'x psphinx':>10} {'WER %':>7} "
          f"{'RSS MB':>7}")
    for name, out in workers.items():
        row = results["backends"].setdefault(name, {"max_rss_mb": round(out["max_rss_mb"], 1),
                                                    "torch_loaded": out["torch_loaded"]})
        if name in onnx_bytes:
            row["model_mb"] = round(onnx_bytes[name] / 2**20, 2)
        for run_name, r in out["runs"].items():
            rtf = r["seconds"] / audio_seconds
            ratio = rtf / (base[run_name]["seconds"] / audio_seconds) if run_name in base else float("nan")
            wer = _wer(ids, r["texts"], refs)
            row[run_name] = {"rtf": round(rtf, 5), "ratio_vs_" + backends[0]: round(ratio, 3),
                             "ratio_vs_pocketsphinx": round(rtf / peer, 3),
                             "wer": None if wer is None else round(wer, 4)}
            wer_text = f"{100 * wer:7.2f}" if wer is not None else "    n/a"
            print(f"{name:<14} {run_name:<12} {rtf:>8.4f} {ratio:>10.3f} {rtf / peer:>10.2f} {wer_text} "
                  f"{out['max_rss_mb']:>7.0f}")
    print("install (runtime packages): " + ", ".join(f"{k} {v:.0f} MB" for k, v in results["install_mb"].items()))
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    parsed = p.parse_args()
    if parsed.worker:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        print(json.dumps(worker(parsed)))
    else:
        run(parsed)
