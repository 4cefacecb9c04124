"""Training throughput of the default LAS model, against the fp32 matmul peak of the same machine.

    python scripts/benchmark.py train [--processes 2] [--threads 1] [--max-duration 60] [--steps 6]

Synthetic batches: utterances of 4-8 s (100 frames/s) filling ``--max-duration`` seconds of audio,
``--tokens-per-second`` target tokens each. A step is forward + backward + Adam update. Reported:
seconds of audio trained per wall-second, the analytic FLOP/s of the model (asr.model.count_flops),
and that as a fraction of the peak: the best torch.mm FLOP/s on large square fp32 matrices with the
same processes and threads, measured in the same run. Then the listener alone (its forward and
backward on the same batches): it holds most of the FLOPs, so its own fraction of the peak is a ceiling
for the whole step.

Default: 2 processes x 1 thread (how 2 cores train best, with DDP): intra-op threading of the small
per-step LSTM products gains little, and OpenMP threads that spin-wait collapse when other work
shares the cores (measured 0.9 s audio/s at 2 threads vs 16 at 1 thread on a busy machine).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time

import torch

from asr.model import LAS, ModelConfig, count_flops, count_listener_flops
from asr.tokenizer import IGNORE_ID

FRAMES_PER_SECOND = 100  # 10 ms hop


def add_arguments(parser) -> None:
    parser.add_argument("--processes", type=int, default=2, help="concurrent workers, as DDP ranks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--max-duration", type=float, default=60.0, help="seconds of audio per batch"
    )
    parser.add_argument("--min-utt", type=float, default=4.0, help="shortest utterance (s)")
    parser.add_argument("--max-utt", type=float, default=8.0, help="longest utterance (s)")
    parser.add_argument("--tokens-per-second", type=float, default=15.0)
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    parser.add_argument(
        "--attention", default="location", choices=["location", "content", "multihead"]
    )
    parser.add_argument("--specaug-policy", default=None, help="default: the ModelConfig default")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)


def make_batch(args, gen: torch.Generator, n_mels: int, vocab: int):
    """Random features/targets: feats (B, T, n_mels), lengths (B,), targets (B, U), target lengths (B,)."""
    seconds = []
    while True:
        s = args.min_utt + (args.max_utt - args.min_utt) * float(torch.rand((), generator=gen))
        if seconds and sum(seconds) + s > args.max_duration:
            break
        seconds.append(s)
    frames = torch.tensor([int(s * FRAMES_PER_SECOND) for s in seconds])
    tokens = torch.tensor([max(1, round(s * args.tokens_per_second)) for s in seconds])
    feats = torch.randn(len(seconds), int(frames.max()), n_mels, generator=gen)
    targets = torch.randint(3, vocab, (len(seconds), int(tokens.max())), generator=gen)
    targets = targets.masked_fill(torch.arange(targets.size(1)) >= tokens[:, None], IGNORE_ID)
    return feats, frames, targets, tokens


def matmul_peak(size: int, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of torch.mm on (size, size) matrices."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def measure(args, rank: int = 0, barrier=None, results=None) -> dict:
    """Time ``args.steps`` training steps of the default model in this process (one DDP-like worker)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + rank)
    gen = torch.Generator().manual_seed(args.seed + rank)
    cfg = dataclasses.replace(ModelConfig(), vocab_size=args.vocab_size, attention=args.attention)
    if args.specaug_policy is not None:
        cfg = dataclasses.replace(cfg, specaug_policy=args.specaug_policy)
    model = LAS(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = [make_batch(args, gen, cfg.n_mels, cfg.vocab_size) for _ in range(args.steps + 2)]

    def train_step(batch) -> None:
        feats, frames, targets, tokens = batch
        out = model(feats, frames, targets, tokens)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    def sync() -> None:
        if barrier is not None:
            barrier.wait()

    for batch in batches[:2]:
        train_step(batch)
    sync()
    peak_before = matmul_peak(args.matmul_size)
    sync()
    audio, flops, elapsed, utts = 0.0, 0.0, 0.0, 0
    for batch in batches[2:]:
        t0 = time.perf_counter()
        train_step(batch)
        elapsed += time.perf_counter() - t0
        _, frames, _, tokens = batch
        audio += float(frames.sum()) / FRAMES_PER_SECOND
        flops += count_flops(cfg, frames.tolist(), tokens.tolist())
        utts += frames.numel()
    sync()
    # The listener alone (forward + backward of its LSTMs) on the same batches: most of the model's
    # FLOPs are here, so its own fraction of the peak bounds what the whole step can reach.
    listener_flops, listener_elapsed = 0.0, 0.0
    for feats, frames, _, _ in batches[2:]:
        t0 = time.perf_counter()
        enc, _ = model.listener(feats, frames)
        enc.sum().backward()
        listener_elapsed += time.perf_counter() - t0
        listener_flops += count_listener_flops(cfg, frames.tolist())
    model.zero_grad(set_to_none=True)
    sync()
    # Other work on the machine changes the peak; take the best of two measurements around the run.
    peak = max(peak_before, matmul_peak(args.matmul_size))
    out = dict(
        audio=audio,
        flops=flops,
        elapsed=elapsed,
        utts=utts,
        listener_flops=listener_flops,
        listener_elapsed=listener_elapsed,
        peak=peak,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    if results is not None:
        results.put(out)
    return out


def run(args) -> dict:
    if args.processes == 1:
        parts = [measure(args)]
    else:
        # Independent workers, like DDP ranks without the gradient all-reduce (about 20 MB per step).
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(args.processes), ctx.Queue()
        procs = [
            ctx.Process(target=measure, args=(args, rank, barrier, results))
            for rank in range(args.processes)
        ]
        for proc in procs:
            proc.start()
        parts = [results.get() for _ in procs]
        for proc in procs:
            proc.join()
    audio_rate = sum(p["audio"] / p["elapsed"] for p in parts)
    flop_rate = sum(p["flops"] / p["elapsed"] for p in parts)
    # Each worker's peak at its thread count, measured concurrently.
    peak = sum(p["peak"] for p in parts)
    listener_rate = sum(p["listener_flops"] / p["listener_elapsed"] for p in parts)
    flop_share = sum(p["listener_flops"] for p in parts) / sum(p["flops"] for p in parts)
    steps = args.steps * len(parts)
    result = {
        "processes": args.processes,
        "threads_per_process": args.threads,
        "attention": args.attention,
        "batch_seconds": round(sum(p["audio"] for p in parts) / steps, 1),
        "utterances_per_batch": round(sum(p["utts"] for p in parts) / steps, 1),
        "audio_seconds_per_second": audio_rate,
        "seconds_per_step": sum(p["elapsed"] for p in parts) / steps,
        "model_gflops_per_second": flop_rate / 1e9,
        "matmul_peak_gflops_per_second": peak / 1e9,
        "fraction_of_peak": flop_rate / peak,
        "listener_share_of_flops": flop_share,
        "listener_alone_fraction_of_peak": listener_rate / peak,
        "parameters": parts[0]["parameters"],
    }
    print(
        f"train: {audio_rate:.1f} s audio/s, {result['seconds_per_step']:.2f} s/step "
        f"({result['utterances_per_batch']} utts, {result['batch_seconds']} s audio per batch; "
        f"{args.processes} process(es) x {args.threads} thread(s))"
    )
    print(
        f"model {result['model_gflops_per_second']:.1f} GFLOP/s vs torch.mm peak "
        f"{result['matmul_peak_gflops_per_second']:.1f} GFLOP/s (same processes and threads): "
        f"{100 * result['fraction_of_peak']:.1f}% of peak"
    )
    print(
        f"listener alone (forward + backward of its LSTMs, same batches): {listener_rate / 1e9:.1f} GFLOP/s, "
        f"{100 * result['listener_alone_fraction_of_peak']:.1f}% of peak; it holds "
        f"{100 * flop_share:.0f}% of the model's FLOPs"
    )
    return result
