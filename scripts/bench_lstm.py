#!/usr/bin/env python
"""One oneDNN LSTM layer, forward and backward, fp32 against bf16 autocast, by batch size and length.

    python scripts/benchmark.py lstm [--batches 2,5,10,20] [--frames 40,300]
                                     [--shapes 80x256,1024x1024] [--threads 1] [--repeats 3]

Why it exists: in ``benchmark.py train`` bf16 speeds the default model's step up less than its matrix
peak suggests, and slows the LibriSpeech-size model down. This isolates the cause on the kernel the
listener uses (``nn.LSTM`` on the padded layout, as :class:`asr.model.BLSTM` runs it): for every
``input x hidden`` shape, batch B and length T it times the forward and the backward of one layer
under each dtype, in the same process, alternating, and prints the per-time-step cost and the ratio.
"""

from __future__ import annotations

import time

import torch

from asr import ops


def add_arguments(parser) -> None:
    parser.add_argument("--batches", default="2,5,10,20", help="batch sizes")
    parser.add_argument("--frames", default="40,300", help="sequence lengths (frames)")
    parser.add_argument("--shapes", default="80x256,1024x1024", help="INPUTxHIDDEN, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)


def _time(lstm: torch.nn.LSTM, x: torch.Tensor, dtype: torch.dtype | None) -> tuple[float, float]:
    t0 = time.perf_counter()
    with ops.autocast(dtype, torch.device("cpu")):
        y, _ = lstm(x)
    t1 = time.perf_counter()
    y.float().sum().backward()
    return t1 - t0, time.perf_counter() - t1


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    dtypes = {"fp32": None}
    if ops.bf16_supported("cpu"):
        dtypes["bf16"] = torch.bfloat16
    else:
        print("lstm: this CPU has no native bf16 (avx512_bf16/amx_bf16): fp32 only")
    rows = []
    print("| input x hidden | B | T | dtype | forward ms | backward ms | backward us per step | step x fp32 |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        in_dim, hidden = (int(v) for v in shape.split("x"))
        for batch in (int(v) for v in args.batches.split(",")):
            for frames in (int(v) for v in args.frames.split(",")):
                torch.manual_seed(0)
                lstm = torch.nn.LSTM(in_dim, hidden, batch_first=True)
                x = torch.randn(batch, frames, in_dim, requires_grad=True)
                sums = {dt: [0.0, 0.0] for dt in dtypes}
                for dtype in dtypes.values():
                    _time(lstm, x, dtype)  # warm-up: oneDNN primitive creation
                for _ in range(args.repeats):
                    for dt, dtype in dtypes.items():
                        f, b = _time(lstm, x, dtype)
                        sums[dt][0] += f / args.repeats
                        sums[dt][1] += b / args.repeats
                fp32 = sum(sums["fp32"])
                for dt, (f, b) in sums.items():
                    row = {"input": in_dim, "hidden": hidden, "batch": batch, "frames": frames, "dtype": dt,
                           "forward_s": f, "backward_s": b, "speedup_vs_fp32": fp32 / (f + b)}
                    rows.append(row)
                    print(f"| {in_dim} x {hidden} | {batch} | {frames} | {dt} | {f * 1e3:.1f} | {b * 1e3:.1f} "
                          f"| {b / frames * 1e6:.0f} | {row['speedup_vs_fp32']:.2f} |", flush=True)
    return {"threads": args.threads, "rows": rows}
