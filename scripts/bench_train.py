#!/usr/bin/env python
"""Training throughput in fp32 and bf16 (CPU autocast) in the same run, each against its own matmul peak.

    python scripts/benchmark.py train [--configs default,librispeech] [--dtypes fp32,bf16]
                                      [--processes 2] [--threads 1] [--max-duration 60] [--steps 4]

Synthetic batches: utterances of 4-8 s (100 frames/s) filling ``--max-duration`` seconds of audio,
``--tokens-per-second`` target tokens each. A step is forward + backward + Adam update; with bf16 the
forward runs under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (master weights, optimiser and losses
in fp32), exactly as ``asr train`` with ``train.amp: bf16`` does. The dtypes take turns step by step on
the same batches, so load from other work on the machine falls on both alike.

Reported per model configuration and dtype: seconds of audio trained per wall-second, the analytic
FLOP/s of the model (:func:`count_flops`, matrix products only), and that as a fraction of the dtype's
own peak: the best torch.mm FLOP/s on large square matrices of that dtype with the same processes and
threads, measured in the same run. Then the listener alone (forward and backward of its LSTMs on the
same batches): it holds most of the FLOPs, so its own fraction of the peak is a ceiling for the step.

Configurations: ``default`` is ``ModelConfig()``; ``librispeech`` is the model of
recipes/librispeech/conf/train_100h.yaml (vocabulary 5000), run on ``--ls-max-duration`` second batches.

Default: 2 processes x 1 thread (how 2 cores train best, with DDP): intra-op threading of the small
per-step LSTM products gains little, and OpenMP threads that spin-wait collapse when other work
shares the cores (measured 0.9 s audio/s at 2 threads vs 16 at 1 thread on a busy machine).
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing as mp
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from asr import ops
from asr.config import from_dict, load_yaml_sections
from asr.model import LAS, ModelConfig, output_lengths
from asr.specaugment import SpecAugmentConfig
from asr.tokenizer import IGNORE_ID

FRAMES_PER_SECOND = 100  # 10 ms hop
LIBRISPEECH_YAML = Path(__file__).resolve().parent.parent / "recipes/librispeech/conf/train_100h.yaml"
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def add_arguments(parser) -> None:
    parser.add_argument("--configs", default="default,librispeech", help="comma-separated: default, librispeech")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--processes", type=int, default=2, help="concurrent workers, as DDP ranks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--max-duration", type=float, default=60.0, help="seconds of audio per batch")
    parser.add_argument("--ls-max-duration", type=float, default=20.0,
                        help="seconds of audio per batch for the librispeech configuration")
    parser.add_argument("--min-utt", type=float, default=4.0, help="shortest utterance (s)")
    parser.add_argument("--max-utt", type=float, default=8.0, help="longest utterance (s)")
    parser.add_argument("--tokens-per-second", type=float, default=15.0)
    parser.add_argument("--vocab-size", type=int, default=256, help="vocabulary of the default configuration")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per dtype (after 1 warm-up step)")
    parser.add_argument("--attention", default=None, choices=["location", "content", "multihead"],
                        help="default: the configuration's")
    parser.add_argument("--specaug-policy", default=None, help="default: the configuration's")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: use --processes 1)")
    parser.add_argument("--seed", type=int, default=0)


def model_config(name: str, args) -> tuple[ModelConfig, SpecAugmentConfig, float]:
    """The named configuration, its SpecAugment settings and its batch duration (s)."""
    if name == "default":
        cfg, spec, duration = ModelConfig(vocab_size=args.vocab_size), SpecAugmentConfig(), args.max_duration
    elif name == "librispeech":
        sections = load_yaml_sections(LIBRISPEECH_YAML)
        cfg = from_dict(ModelConfig, {**sections.get("model", {}), "vocab_size": 5000}, "model")
        spec = from_dict(SpecAugmentConfig, sections.get("specaug", {}), "specaug")
        duration = args.ls_max_duration
    else:
        raise SystemExit(f"bench train: unknown configuration {name!r}: expected default or librispeech")
    if args.attention is not None:
        cfg = dataclasses.replace(cfg, attention=args.attention)
    if args.specaug_policy is not None:
        spec = dataclasses.replace(spec, policy=args.specaug_policy)
    return cfg, spec, duration


# ------------------------------------------------------------------------------------------------
# Analytic FLOP count
# ------------------------------------------------------------------------------------------------


def _lstm_macs(in_dim: int, hidden: int) -> int:
    return 4 * hidden * (in_dim + hidden)


def _listener_macs(cfg: ModelConfig, n_frames: int) -> int:
    """Multiply-accumulates of the listener's forward pass over one utterance of ``n_frames`` frames."""
    hidden, d = cfg.listener_hidden, cfg.encoder_dim
    t = max(n_frames, cfg.time_reduction) // cfg.frame_stack
    dim = cfg.n_mels * cfg.frame_stack
    macs = 0
    for _ in range(cfg.listener_layers):
        macs += 2 * t * _lstm_macs(dim, hidden)
        dim = d
    for _ in range(cfg.pyramid_layers):
        t //= 2
        macs += 2 * t * _lstm_macs(2 * dim, hidden)
        dim = d
    return macs


def count_listener_flops(cfg: ModelConfig, frames: Sequence[int]) -> float:
    """Analytic FLOPs of the listener alone, forward + backward (backward = 2 x forward), as :func:`count_flops`."""
    return 3.0 * 2.0 * sum(_listener_macs(cfg, n) for n in frames)


def count_flops(
    cfg: ModelConfig, frames: int | Sequence[int], tokens: int | Sequence[int]
) -> float:
    """Analytic FLOPs of one forward + backward pass (matrix products only, backward = 2 x forward).

    frames: input frames of each utterance (or one int); tokens: target tokens of each utterance
    (without EOS; the decoder runs tokens + 1 steps). Element-wise work (activations, softmax, losses) is
    left out: it is small next to the products and runs below matmul speed anyway.
    """
    frames = [frames] if isinstance(frames, int) else list(frames)
    tokens = [tokens] if isinstance(tokens, int) else list(tokens)
    if len(frames) != len(tokens):
        raise ValueError("frames and tokens must have one entry per utterance")
    d = cfg.encoder_dim
    heads = cfg.attention_heads if cfg.attention == "multihead" else 1
    macs = 0
    for n_frames, n_tokens in zip(frames, tokens, strict=True):
        macs += _listener_macs(cfg, n_frames)
        t = output_lengths(n_frames, cfg)
        steps = n_tokens + 1
        if cfg.ctc_weight > 0:
            macs += t * d * cfg.vocab_size
        if cfg.ctc_weight < 1:
            macs += t * d * cfg.attention_dim  # key projection
            per_step = _lstm_macs(cfg.embed_dim + d, cfg.decoder_hidden)
            per_step += (cfg.decoder_layers - 1) * _lstm_macs(
                cfg.decoder_hidden, cfg.decoder_hidden
            )
            per_step += cfg.decoder_hidden * cfg.attention_dim  # query
            per_step += t * cfg.attention_dim  # energies
            per_step += heads * t * d  # contexts
            if cfg.attention != "content":
                per_step += (
                    heads
                    * t
                    * cfg.location_channels
                    * (cfg.location_kernel + cfg.attention_dim // heads)
                )
            if heads > 1:
                per_step += d * d // heads * heads
            per_step += (cfg.decoder_hidden + d) * cfg.vocab_size  # output projection
            macs += steps * per_step
    return 3.0 * 2.0 * macs


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def make_batch(args, gen: torch.Generator, n_mels: int, vocab: int, duration: float):
    """Random features/targets: feats (B, T, n_mels), lengths (B,), targets (B, U), target lengths (B,)."""
    seconds = []
    while True:
        s = args.min_utt + (args.max_utt - args.min_utt) * float(torch.rand((), generator=gen))
        if seconds and sum(seconds) + s > duration:
            break
        seconds.append(s)
    frames = torch.tensor([int(s * FRAMES_PER_SECOND) for s in seconds])
    tokens = torch.tensor([max(1, round(s * args.tokens_per_second)) for s in seconds])
    feats = torch.randn(len(seconds), int(frames.max()), n_mels, generator=gen)
    targets = torch.randint(3, vocab, (len(seconds), int(tokens.max())), generator=gen)
    targets = targets.masked_fill(torch.arange(targets.size(1)) >= tokens[:, None], IGNORE_ID)
    return feats, frames, targets, tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(size: int, dtype: torch.dtype = torch.float32, repeats: int = 5, device="cpu") -> float:
    """Best FLOP/s of torch.mm on (size, size) matrices of ``dtype``."""
    device = torch.device(device)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def measure(args, name: str, dtypes: Sequence[str], rank: int = 0, barrier=None, results=None) -> dict:
    """Time ``args.steps`` training steps per dtype of configuration ``name`` in this process."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + rank)
    gen = torch.Generator().manual_seed(args.seed + rank)
    cfg, spec, duration = model_config(name, args)
    device = torch.device(args.device)
    base = LAS(cfg, spec).to(device).train()
    models = {dt: copy.deepcopy(base) for dt in dtypes}
    opts = {dt: torch.optim.Adam(m.parameters(), lr=1e-4) for dt, m in models.items()}
    batches = [make_batch(args, gen, cfg.n_mels, cfg.vocab_size, duration) for _ in range(args.steps + 1)]
    batches = [(f.to(device), n, t.to(device), k) for f, n, t, k in batches]

    def train_step(dt: str, batch) -> float:
        feats, frames, targets, tokens = batch
        _sync(device)
        t0 = time.perf_counter()
        with ops.autocast(DTYPES[dt], device):
            out = models[dt](feats, frames, targets, tokens)
        opts[dt].zero_grad(set_to_none=True)
        out.loss.backward()
        opts[dt].step()
        _sync(device)
        return time.perf_counter() - t0

    def listener_step(dt: str, batch) -> float:
        feats, frames, _, _ = batch
        _sync(device)
        t0 = time.perf_counter()
        with ops.autocast(DTYPES[dt], device):
            enc, _ = models[dt].listener(feats, frames.to(device))
        enc.float().sum().backward()
        _sync(device)
        return time.perf_counter() - t0

    def sync() -> None:
        if barrier is not None:
            barrier.wait()

    for dt in dtypes:
        train_step(dt, batches[0])
    sync()
    peaks = {dt: matmul_peak(args.matmul_size, DTYPES[dt] or torch.float32, device=device) for dt in dtypes}
    sync()
    out = {dt: dict(audio=0.0, flops=0.0, elapsed=0.0, utts=0, listener_flops=0.0, listener_elapsed=0.0)
           for dt in dtypes}
    for batch in batches[1:]:
        _, frames, _, tokens = batch
        for dt in dtypes:  # turn by turn, so that load from other work falls on every dtype alike
            r = out[dt]
            r["elapsed"] += train_step(dt, batch)
            r["audio"] += float(frames.sum()) / FRAMES_PER_SECOND
            r["flops"] += count_flops(cfg, frames.tolist(), tokens.tolist())
            r["utts"] += frames.numel()
    sync()
    for batch in batches[1:]:
        for dt in dtypes:
            out[dt]["listener_elapsed"] += listener_step(dt, batch)
            out[dt]["listener_flops"] += count_listener_flops(cfg, batch[1].tolist())
    for m in models.values():
        m.zero_grad(set_to_none=True)
    sync()
    # Other work on the machine changes the peak; take the best of two measurements around the run.
    for dt in dtypes:
        out[dt]["peak"] = max(peaks[dt], matmul_peak(args.matmul_size, DTYPES[dt] or torch.float32, device=device))
    result = dict(per_dtype=out, parameters=sum(p.numel() for p in base.parameters()))
    if results is not None:
        results.put(result)
    return result


def _run_config(args, name: str, dtypes: Sequence[str]) -> list[dict]:
    if args.processes == 1:
        parts = [measure(args, name, dtypes)]
    else:
        # Independent workers, like DDP ranks without the gradient all-reduce.
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(args.processes), ctx.Queue()
        procs = [ctx.Process(target=measure, args=(args, name, dtypes, rank, barrier, results))
                 for rank in range(args.processes)]
        for proc in procs:
            proc.start()
        parts = [results.get() for _ in procs]
        for proc in procs:
            proc.join()
    rows = []
    steps = args.steps * len(parts)
    for dt in dtypes:
        p = [part["per_dtype"][dt] for part in parts]
        audio_rate = sum(x["audio"] / x["elapsed"] for x in p)
        flop_rate = sum(x["flops"] / x["elapsed"] for x in p)
        listener_rate = sum(x["listener_flops"] / x["listener_elapsed"] for x in p)
        peak = sum(x["peak"] for x in p)  # each worker's peak at its thread count, measured concurrently
        rows.append({
            "config": name,
            "dtype": dt,
            "parameters": parts[0]["parameters"],
            "batch_seconds": round(sum(x["audio"] for x in p) / steps, 1),
            "utterances_per_batch": round(sum(x["utts"] for x in p) / steps, 1),
            "audio_seconds_per_second": audio_rate,
            "seconds_per_step": sum(x["elapsed"] for x in p) / steps,
            "model_gflops_per_second": flop_rate / 1e9,
            "matmul_peak_gflops_per_second": peak / 1e9,
            "fraction_of_peak": flop_rate / peak,
            "listener_gflops_per_second": listener_rate / 1e9,
            "listener_fraction_of_peak": listener_rate / peak,
            "listener_seconds": sum(x["listener_elapsed"] for x in p) / steps,
            "listener_share_of_flops": sum(x["listener_flops"] for x in p) / sum(x["flops"] for x in p),
        })
    fp32 = next((r for r in rows if r["dtype"] == "fp32"), None)
    for r in rows:
        if fp32 is not None:
            r["step_speedup_vs_fp32"] = fp32["seconds_per_step"] / r["seconds_per_step"]
            r["listener_speedup_vs_fp32"] = fp32["listener_seconds"] / r["listener_seconds"]
    return rows


def run(args) -> dict:
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = set(dtypes) - set(DTYPES)
    if unknown:
        raise SystemExit(f"bench train: unknown dtype(s) {sorted(unknown)}: expected fp32, bf16")
    if "bf16" in dtypes and not ops.bf16_supported(args.device):
        print(f"train: {args.device} has no native bf16 (on CPU: avx512_bf16/amx_bf16): measuring fp32 only")
        dtypes = [d for d in dtypes if d != "bf16"]
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        rows += _run_config(args, name, dtypes)
    print(f"train: {args.processes} process(es) x {args.threads} thread(s); CPU bf16 features: "
          f"{', '.join(sorted(ops.cpu_bf16_flags())) or 'none'}")
    print("| config | dtype | params | batch s | audio s/s | s/step | GFLOP/s | peak GFLOP/s (own dtype) "
          "| % of peak | listener GFLOP/s | listener % of peak | step x fp32 | listener x fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['dtype']} | {r['parameters'] / 1e6:.1f} M | {r['batch_seconds']} "
              f"| {r['audio_seconds_per_second']:.1f} | {r['seconds_per_step']:.2f} "
              f"| {r['model_gflops_per_second']:.1f} | {r['matmul_peak_gflops_per_second']:.0f} "
              f"| {100 * r['fraction_of_peak']:.1f} | {r['listener_gflops_per_second']:.1f} "
              f"| {100 * r['listener_fraction_of_peak']:.1f} | {r.get('step_speedup_vs_fp32', 1.0):.2f} "
              f"| {r.get('listener_speedup_vs_fp32', 1.0):.2f} |")
    return {"processes": args.processes, "threads_per_process": args.threads, "rows": rows}
