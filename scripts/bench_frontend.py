"""Log-mel speed on one thread: asr.features.LogMel against librosa and kaldi-native-fbank.

    python scripts/benchmark.py frontend [--seconds 600] [--repeats 3] [--threads 1]

All three compute 80 mel bands of 25 ms windows every 10 ms from the same synthetic signal (default
10 minutes at 16 kHz). librosa runs with exactly our settings (Hann window, n_fft 512, centred zero-padded
frames, Slaney mel 20-7600 Hz, log); kaldi-native-fbank with the nearest ones (no dither, no pre-emphasis,
no DC removal, centred frames, Hann window, 20-7600 Hz). Times are the best of ``--repeats`` runs after a
warm-up; kaldi is timed for feature computation only (``accept_waveform`` + ``input_finished``), with the
Python loop that copies its frames out reported separately. Ratios are peer time / our time.

A fourth line, the FFT floor, times ``torch.fft.rfft`` alone on the same windowed frames (already framed
and windowed, so nothing else is counted). Any log-mel built on that FFT needs at least this long, so
librosa's time over it bounds the speed-up an FFT-based frontend can reach on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from asr.features import FeatureConfig, LogMel, num_frames


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=600.0, help="signal length in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads for every method")
    parser.add_argument("--seed", type=int, default=0)


def synth_signal(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """A speech-like test signal: noise-excited harmonic sweeps with syllable-rate amplitude modulation.

    Returns:
        (round(seconds * sample_rate),) float32 in [-1, 1].
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    x = 0.2 * envelope * voiced + 0.01 * rng.standard_normal(t.size)
    return np.clip(x, -1, 1).astype(np.float32)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time in seconds of ``repeats`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def librosa_logmel(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(frames, n_mels) log-mel from librosa with our exact settings."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=x,
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
    )
    return np.log(np.maximum(mel, cfg.log_floor)).T


def kaldi_options(cfg: FeatureConfig):
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = cfg.sample_rate
    opts.frame_opts.frame_length_ms = 1000.0 * cfg.win_length / cfg.sample_rate
    opts.frame_opts.frame_shift_ms = 1000.0 * cfg.hop_length / cfg.sample_rate
    opts.frame_opts.dither = 0.0
    opts.frame_opts.preemph_coeff = 0.0
    opts.frame_opts.remove_dc_offset = False
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = cfg.n_mels
    opts.mel_opts.low_freq = cfg.fmin
    opts.mel_opts.high_freq = cfg.fmax
    return opts


def kaldi_compute(x: np.ndarray, cfg: FeatureConfig, opts):
    import kaldi_native_fbank as knf

    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(cfg.sample_rate, x)
    fbank.input_finished()
    return fbank


def kaldi_extract(fbank) -> np.ndarray:
    return np.stack([np.asarray(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)])


def fft_floor(module: LogMel, x: np.ndarray, repeats: int) -> float:
    """Best time of the bare real FFTs of every frame of ``x`` (framing and windowing done beforehand)."""
    cfg = module.cfg
    wave = torch.from_numpy(x)
    total = int(num_frames(wave.numel(), cfg))
    frames = torch.zeros(total, cfg.n_fft)
    frames[:, : cfg.win_length] = module._frames(wave, 0, total) * module.window
    out = torch.empty(total, cfg.n_fft // 2 + 1, dtype=torch.complex64)
    chunk = module.chunk_frames

    def transform() -> None:
        # The same cache-sized chunks LogMel uses, into a preallocated output.
        for start in range(0, total, chunk):
            torch.fft.rfft(frames[start:start + chunk], out=out[start:start + chunk])

    return best_time(transform, repeats)


def run(args) -> dict:
    from threadpoolctl import threadpool_limits

    cfg = FeatureConfig()
    x = synth_signal(args.seconds, cfg.sample_rate, args.seed)
    wave = torch.from_numpy(x)[None]
    module = LogMel(cfg)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(limits=args.threads):
            ours = best_time(lambda: module(wave), args.repeats)
            lib = best_time(lambda: librosa_logmel(x, cfg), args.repeats)
            opts = kaldi_options(cfg)
            kaldi = best_time(lambda: kaldi_compute(x, cfg, opts), args.repeats)
            start = time.perf_counter()
            kaldi_frames = kaldi_extract(kaldi_compute(x, cfg, opts))
            kaldi_total = time.perf_counter() - start
            floor = fft_floor(module, x, args.repeats)
            feats = module(wave)[0][0].numpy()
            ref = librosa_logmel(x, cfg)
    finally:
        torch.set_num_threads(previous)
    parity = float(np.linalg.norm(np.exp(feats) - np.exp(ref)) / np.linalg.norm(np.exp(ref)))
    result = {
        "signal_seconds": args.seconds,
        "threads": args.threads,
        "frames": int(feats.shape[0]),
        "kaldi_frames": int(kaldi_frames.shape[0]),
        "ours_s": ours,
        "librosa_s": lib,
        "kaldi_compute_s": kaldi,
        "kaldi_with_extract_s": kaldi_total,
        "speedup_vs_librosa": lib / ours,
        "speedup_vs_kaldi": kaldi / ours,
        "realtime_factor": args.seconds / ours,
        "fft_floor_s": floor,
        "librosa_over_fft_floor": lib / floor,
        "power_rel_err_vs_librosa": parity,
    }
    print(f"signal: {args.seconds:.0f} s at {cfg.sample_rate} Hz, {feats.shape[0]} frames, {args.threads} thread(s)")
    print(f"  asr LogMel           {ours * 1000:9.1f} ms  ({args.seconds / ours:,.0f}x real time)")
    print(f"  librosa melspec      {lib * 1000:9.1f} ms  -> ours is {lib / ours:.1f}x faster")
    print(f"  kaldi-native-fbank   {kaldi * 1000:9.1f} ms  -> ours is {kaldi / ours:.1f}x faster")
    print(f"  (kaldi incl. frame copy-out: {kaldi_total * 1000:.1f} ms)")
    print(f"  FFT floor (rfft only) {floor * 1000:8.1f} ms  -> an FFT-based log-mel is at most "
          f"{lib / floor:.1f}x faster than librosa here; ours spends {100 * floor / ours:.0f}% of its time in it")
    print(f"  power-domain relative error vs librosa: {parity:.2e}")
    return result
