#!/usr/bin/env python
"""Plot a log-mel spectrogram before and after SpecAugment, as a PNG.

    python scripts/plot_specaugment.py --out specaug.png [--audio speech.wav] [--policy LD] [--seed 0]

Without ``--audio`` a 3-second synthetic vowel-like signal is used. The "after" panel is what a model
sees in training: time warp, frequency masks and time masks of the chosen policy, on CMVN-normalised
features (per-utterance mean and variance here, so masks show as the mean value, like in training).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr.audio import SAMPLE_RATE, load_audio  # noqa: E402
from asr.features import FeatureConfig, log_mel  # noqa: E402
from asr.specaugment import POLICIES, SpecAugment, SpecAugmentConfig  # noqa: E402


def synth_speechlike(seconds: float = 3.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(samples,) float32: a gliding harmonic source through three moving formant-like resonances."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 110 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formants = [700 + 300 * np.sin(2 * np.pi * 0.5 * t), 1200 + 600 * np.cos(2 * np.pi * 0.4 * t), 2600]
    x = np.zeros_like(t)
    for k in range(1, 40):
        harmonic = k * f0
        gain = sum(np.exp(-(((harmonic - f) / 150.0) ** 2)) for f in formants)
        x += gain * np.sin(k * phase)
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2  # syllable-rate envelope
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def augmented_pair(wave: np.ndarray, policy: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames, n_mels) normalised log-mel, before and after SpecAugment."""
    feats = log_mel(wave, FeatureConfig())
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-5)
    torch.manual_seed(seed)
    aug = SpecAugment(SpecAugmentConfig(policy=policy)).train()
    x = torch.from_numpy(feats)[None]
    after = aug(x, torch.tensor([x.shape[1]]))[0].numpy()
    return feats, after


def plot(before: np.ndarray, after: np.ndarray, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
    vmin, vmax = np.percentile(before, [1, 99])
    for ax, feats, label in ((axes[0], before, "before"), (axes[1], after, "after SpecAugment")):
        im = ax.imshow(feats.T, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax)
        ax.set_ylabel("mel bin")
        ax.set_title(label)
    axes[1].set_xlabel("frame (10 ms)")
    fig.colorbar(im, ax=axes, shrink=0.8, label="normalised log-mel")
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--audio", type=Path, help="audio file (default: a synthetic signal)")
    parser.add_argument("--policy", default="LD", choices=[*POLICIES, "none"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    wave = load_audio(args.audio) if args.audio else synth_speechlike()
    before, after = augmented_pair(wave, args.policy, args.seed)
    source = args.audio.name if args.audio else "synthetic signal"
    plot(before, after, f"{source}: SpecAugment policy {args.policy} (seed {args.seed})", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
