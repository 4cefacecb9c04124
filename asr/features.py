"""Log-mel filterbank features and global mean/variance normalisation.

Framing follows ``librosa.stft(center=True, pad_mode="constant")``: frame ``t`` is centred on sample
``t * hop_length`` and the signal is zero-padded at both ends, so ``num_frames = 1 + samples // hop``.
Zero padding (not reflection) keeps an utterance's edge frames independent of anything but its own
samples, and :class:`LogMel` computes each batch row from its own samples only, so an utterance gives
bit-identical features alone and inside any padded batch.

Speed comes from framing only ``win_length`` samples (the window's zero tails are never multiplied),
real FFTs over cache-sized chunks of frames, power as ``re**2 + im**2`` (no square root), and one matmul
with a mel matrix cut to the FFT bins the filters actually touch.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from asr.errors import DataError
from asr.io_utils import atomic_write_text


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel settings. Defaults: 25 ms Hann windows every 10 ms, 80 Slaney mel bands, 20-7600 Hz."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz: 100 frames per second
    n_mels: int = 80
    fmin: float = 20.0
    fmax: float = 7600.0  # below Nyquist: telephone-band and resampled audio has little energy above
    log_floor: float = 1e-10  # power floor before the log; -23 in log units

    def __post_init__(self) -> None:
        if min(self.sample_rate, self.n_fft, self.win_length, self.hop_length, self.n_mels) <= 0:
            raise ValueError("sample_rate, n_fft, win_length, hop_length and n_mels must be positive")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} must not exceed n_fft {self.n_fft}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin} fmax={self.fmax}")
        if not self.log_floor > 0:
            raise ValueError(f"log_floor must be positive, got {self.log_floor}")


def num_frames(num_samples: int | Tensor, cfg: FeatureConfig) -> int | Tensor:
    """Number of feature frames for ``num_samples`` samples: ``1 + num_samples // hop``, 0 for no samples.

    Accepts an int or a (batch,) long tensor of lengths.
    """
    if isinstance(num_samples, Tensor):
        return torch.where(num_samples > 0, 1 + num_samples // cfg.hop_length, torch.zeros_like(num_samples))
    return 1 + int(num_samples) // cfg.hop_length if num_samples > 0 else 0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    return np.where(hz >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-12) / _MIN_LOG_HZ) / _LOGSTEP, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


# Slaney's Auditory Toolbox constants: 200/3 Hz per mel up to 1 kHz, then 27 mels per factor 6.4
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def warp_frequencies(hz: np.ndarray | float, alpha: float, cfg: FeatureConfig) -> np.ndarray:
    """Vocal-tract-length warp of Jaitly and Hinton (2013): ``f -> alpha * f``, piecewise linear.

    Frequencies up to ``F_hi * min(alpha, 1) / alpha`` (``F_hi`` = 0.6 of Nyquist, 4.8 kHz at 16 kHz)
    are scaled by ``alpha``; above, a second line joins that point to Nyquist, so the band edge stays.
    """
    hz = np.asarray(hz, dtype=np.float64)
    nyquist = cfg.sample_rate / 2
    knee = 0.6 * nyquist * min(alpha, 1.0)
    cut = knee / alpha
    upper = nyquist - (nyquist - knee) / (nyquist - cut) * (nyquist - hz)
    return np.where(hz <= cut, alpha * hz, upper)


def mel_matrix(cfg: FeatureConfig, warp: float = 1.0) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, equal to ``librosa.filters.mel`` (htk=False, norm="slaney").

    ``warp`` != 1 gives the filterbank of vocal-tract-length perturbation: the energy at frequency ``f``
    is counted at :func:`warp_frequencies` ``(f, warp)``, as if the speaker's formants were ``warp``
    times higher.

    Computed here rather than by librosa because importing librosa's filters pulls in scipy.signal and
    numba, seconds of start-up for every command that only needs this small matrix.

    Returns:
        (n_fft // 2 + 1, n_mels) float32, transposed for ``power @ mel``.
    """
    fft_hz = np.fft.rfftfreq(cfg.n_fft, d=1.0 / cfg.sample_rate)
    if warp != 1.0:
        fft_hz = warp_frequencies(fft_hz, warp, cfg)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    return np.ascontiguousarray(weights.T, dtype=np.float32)


def mel_warp_matrix(cfg: FeatureConfig, warp: float) -> np.ndarray:
    """The VTLP warp applied to log-mel features already computed: ``feats @ M``.

    Band ``b`` (centre ``c_b``) takes the log energy at the frequency that the warp maps onto ``c_b``,
    interpolated linearly between the two nearest bands (edge bands are held), so that cached features
    can be warped without their audio.

    Returns:
        (n_mels, n_mels) float32.
    """
    mels = np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2)[1:-1]
    centres = mel_to_hz(mels)
    grid = np.linspace(0.0, cfg.sample_rate / 2, 4097)
    source = np.interp(centres, warp_frequencies(grid, warp, cfg), grid)  # the warp is increasing
    pos = np.clip(np.interp(hz_to_mel(source), mels, np.arange(cfg.n_mels)), 0, cfg.n_mels - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, cfg.n_mels - 1)
    frac = pos - lo
    m = np.zeros((cfg.n_mels, cfg.n_mels), dtype=np.float64)
    cols = np.arange(cfg.n_mels)
    np.add.at(m, (lo, cols), 1 - frac)
    np.add.at(m, (hi, cols), frac)
    return m.astype(np.float32)


class LogMel(nn.Module):
    """Batched log-mel filterbank that is exact under padding.

    ``forward(wave (batch, samples), lengths (batch,)) -> (feats (batch, frames, n_mels), frame_lengths)``.
    Each row is computed from its own valid samples only, in fixed-size chunks of frames, so an
    utterance gives bit-identical features alone and inside any padded batch, padding costs no FFTs,
    and the working set of a long signal stays in cache. Frames past a row's length are zero.
    ``warp`` != 1 uses the vocal-tract-length-perturbed filterbank of :func:`mel_matrix`.
    """

    chunk_frames = 512  # frames per FFT call: amortises call overhead, keeps the spectrum in L2 cache

    def __init__(self, cfg: FeatureConfig | None = None, warp: float = 1.0):
        super().__init__()
        self.cfg = cfg or FeatureConfig()
        c = self.cfg
        mel = mel_matrix(c, warp)
        # Bins above the last non-zero filter row cost FFT output but no mel energy: leave them out.
        used = np.nonzero(mel.any(axis=1))[0]
        self.n_bins = int(used[-1]) + 1 if used.size else 1
        self.register_buffer("mel", torch.from_numpy(mel[: self.n_bins].copy()), persistent=False)
        window = torch.hann_window(c.win_length, periodic=True, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        # librosa centres a win_length window inside an n_fft frame centred on t * hop: its first
        # non-zero sample sits at t * hop - pad_left.
        self.pad_left = c.n_fft // 2 - (c.n_fft - c.win_length) // 2
        self.pad_right = c.win_length - self.pad_left

    @torch.no_grad()
    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Compute log-mel features.

        Args:
            wave: (batch, samples) float waveform; samples past each length are ignored.
            lengths: (batch,) long valid samples per row; None means every row is full.
        Returns:
            feats: (batch, frames, n_mels) float32, ``frames = num_frames(samples)``; zero past each length.
            frame_lengths: (batch,) long, ``num_frames(lengths)``.
        """
        if wave.dim() != 2:
            raise ValueError(f"wave must be (batch, samples), got shape {tuple(wave.shape)}")
        batch, samples = wave.shape
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long)
        lengths = lengths.to(device=wave.device, dtype=torch.long).clamp(max=samples)
        frame_lengths = num_frames(lengths, self.cfg)
        feats = wave.new_zeros(batch, num_frames(samples, self.cfg), self.cfg.n_mels, dtype=torch.float32)
        for i, n in enumerate(lengths.tolist()):
            if n > 0:
                self._row(wave[i, :n], feats[i])
        return feats, frame_lengths

    def _row(self, wave: Tensor, out: Tensor) -> None:
        """Log-mel of one utterance ``wave (samples,)`` into ``out (>= frames, n_mels)``."""
        c = self.cfg
        wave = wave.to(torch.float32)
        total = num_frames(wave.numel(), c)
        size = min(self.chunk_frames, total)
        # Work buffers are reused across chunks: fresh multi-megabyte allocations per chunk cost more in
        # page faults than the FFTs themselves.
        # zero tail of each row stays zero: the FFT input is already n_fft long, so rfft copies nothing
        windowed = wave.new_zeros(size, c.n_fft)
        spec = wave.new_empty(size, c.n_fft // 2 + 1, dtype=torch.complex64)
        power = wave.new_empty(size, self.n_bins)
        for start in range(0, total, size):
            stop = min(start + size, total)
            k = stop - start
            torch.mul(self._frames(wave, start, stop), self.window, out=windowed[:k, : c.win_length])
            torch.fft.rfft(windowed[:k], out=spec[:k])
            # re^2 + im^2 on the interleaved view: no square root, no slow size-2 reduction
            reim = torch.view_as_real(spec[:k, : self.n_bins]).flatten(1).square_()  # (k, 2 * n_bins)
            torch.add(reim[:, 0::2], reim[:, 1::2], out=power[:k])
            dst = out[start:stop]
            torch.matmul(power[:k], self.mel, out=dst)
            dst.clamp_(min=c.log_floor).log_()

    def _frames(self, wave: Tensor, start: int, stop: int) -> Tensor:
        """Frames ``[start, stop)`` of ``wave (samples,)`` as a (stop - start, win_length) tensor.

        Frames inside the signal are a strided view (no copy); only frames overlapping an edge copy a
        small zero-padded slice, so the whole signal is never copied just to pad it.
        """
        c = self.cfg
        first = start * c.hop_length - self.pad_left
        end = (stop - 1) * c.hop_length - self.pad_left + c.win_length
        n = wave.numel()
        if first >= 0 and end <= n:
            return wave[first:end].unfold(0, c.win_length, c.hop_length)
        piece = wave[max(first, 0) : min(end, n)]
        piece = torch.nn.functional.pad(piece[None], (max(0, -first), max(0, end - n)))[0]
        return piece.unfold(0, c.win_length, c.hop_length)


@functools.lru_cache(maxsize=8)
def _cached_logmel(cfg: FeatureConfig) -> LogMel:
    return LogMel(cfg).eval()


def log_mel(wave: np.ndarray, cfg: FeatureConfig | None = None) -> np.ndarray:
    """Log-mel features of one utterance.

    Args:
        wave: (samples,) float waveform at ``cfg.sample_rate``.
    Returns:
        (frames, n_mels) float32 with ``frames = num_frames(samples, cfg)``.
    """
    cfg = cfg or FeatureConfig()
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]
    feats, _ = _cached_logmel(cfg)(x)
    return feats[0].numpy()


class GlobalCMVN:
    """Global per-dimension mean and variance, accumulated in float64 over any number of chunks.

    Workers each accumulate their share and are combined with :meth:`merge`; the result equals one pass
    over all the data. Sums (not running means) are kept so merging is exact addition.
    """

    def __init__(self, n_mels: int, min_std: float = 1e-5):
        self.n_mels = n_mels
        self.min_std = min_std  # a constant band (e.g. silence below fmin) must not divide by zero
        self.count = 0
        self.sum = np.zeros(n_mels, dtype=np.float64)
        self.sumsq = np.zeros(n_mels, dtype=np.float64)

    def accumulate(self, feats: np.ndarray | Tensor) -> None:
        """Add frames to the statistics.

        Args:
            feats: (frames, n_mels); pass only real frames (slice padded batches to their lengths).
        """
        if isinstance(feats, Tensor):
            feats = feats.detach().cpu().numpy()
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_mels:
            raise ValueError(f"expected (frames, {self.n_mels}) features, got shape {x.shape}")
        self.count += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sumsq += np.einsum("ij,ij->j", x, x)

    def merge(self, other: GlobalCMVN) -> GlobalCMVN:
        """Add another accumulator's statistics into this one; returns self."""
        if other.n_mels != self.n_mels:
            raise ValueError(f"cannot merge CMVN of {other.n_mels} dims into {self.n_mels}")
        self.count += other.count
        self.sum += other.sum
        self.sumsq += other.sumsq
        return self

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (mean (n_mels,), std (n_mels,)) as float32; std is floored at ``min_std``."""
        if self.count == 0:
            raise DataError("cmvn", "no frames were accumulated")
        mean = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - mean * mean, 0.0)
        std = np.maximum(np.sqrt(var), self.min_std)
        return mean.astype(np.float32), std.astype(np.float32)

    def apply(self, feats: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Normalise features: ``(feats - mean) / std``.

        Args:
            feats: (..., n_mels) numpy array or tensor.
        Returns:
            same type and shape as ``feats``.
        """
        mean, std = self.finalize()
        if isinstance(feats, Tensor):
            m = torch.from_numpy(mean).to(feats.device, feats.dtype)
            s = torch.from_numpy(std).to(feats.device, feats.dtype)
            return (feats - m) / s
        return ((feats - mean) / std).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        mean, std = self.finalize()
        return {
            "n_mels": self.n_mels,
            "count": self.count,
            "min_std": self.min_std,
            "sum": self.sum.tolist(),
            "sumsq": self.sumsq.tolist(),
            "mean": mean.tolist(),
            "std": std.tolist(),
        }

    def save(self, path: str | Path) -> None:
        """Write the statistics (sums, count, and the derived mean/std) as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GlobalCMVN:
        """Read statistics written by :meth:`save`; raises DataError on a missing or malformed file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(path, "CMVN stats file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(path, f"cannot read CMVN stats ({e.__class__.__name__})") from None
        try:
            cmvn = cls(int(data["n_mels"]), float(data.get("min_std", 1e-5)))
            cmvn.count = int(data["count"])
            cmvn.sum = np.asarray(data["sum"], dtype=np.float64)
            cmvn.sumsq = np.asarray(data["sumsq"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(path, f"malformed CMVN stats ({e.__class__.__name__}: {e})") from None
        if cmvn.sum.shape != (cmvn.n_mels,) or cmvn.sumsq.shape != (cmvn.n_mels,) or cmvn.count <= 0:
            raise DataError(path, f"malformed CMVN stats: expected {cmvn.n_mels} dims and a positive count")
        if not (np.isfinite(cmvn.sum).all() and np.isfinite(cmvn.sumsq).all()):
            raise DataError(path, "CMVN stats hold NaN or Inf")
        return cmvn
