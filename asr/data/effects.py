"""Audio effects shared by corpus synthesis and on-the-fly training augmentation.

Every function is a pure function of its inputs and a ``numpy.random.Generator``, so callers that seed
the generator per utterance get byte-identical results on a re-run. Waves are (n,) float32 at 16 kHz.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000


def synthetic_rir(rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A room impulse response: a direct path then exponentially decaying noise. Shape (n,)."""
    rt60 = rng.uniform(0.2, 0.7)
    t = np.arange(int(rt60 * rate)) / rate
    tail = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    delay = int(rng.uniform(0.002, 0.01) * rate)  # first reflection after the direct sound
    rir = np.zeros(t.size + delay, dtype=np.float64)
    rir[0] = 1.0
    rir[delay:] += 0.3 * tail / max(np.abs(tail).max(), 1e-9)
    return (rir / np.sqrt(np.sum(rir ** 2))).astype(np.float32)


def convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full linear convolution of (n,) and (m,) by FFT: (n + m - 1,) float32."""
    # numpy rather than scipy.signal, whose import alone takes seconds on a busy machine.
    n = a.size + b.size - 1
    nfft = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, nfft) * np.fft.rfft(b, nfft), nfft)[:n].astype(np.float32)


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``wave`` in the room of ``rir``, cut to the input length and rescaled to the input power. (n,) -> (n,)."""
    power = float(np.mean(wave ** 2)) + 1e-12
    # The direct path is moved to sample 0 so that reverberation does not delay the words.
    rir = rir[int(np.argmax(np.abs(rir))):]
    wet = convolve(wave, rir)[: wave.size]
    return (wet * np.sqrt(power / (np.mean(wet ** 2) + 1e-12))).astype(np.float32)


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``wave`` plus ``noise`` (same length) scaled so that the signal-to-noise ratio is ``snr_db``. (n,)."""
    power = float(np.mean(wave ** 2)) + 1e-12
    noise_power = float(np.mean(noise ** 2)) + 1e-12
    return (wave + noise * np.float32(np.sqrt(power / noise_power / 10 ** (snr_db / 10)))).astype(np.float32)


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of ``n`` samples whose power falls as ``1 / f**exponent``.

    0 is white, 1 pink, 2 brown (red); negative exponents tilt towards high frequencies (blue). (n,) float32.
    """
    size = 1 << (max(n, 2) - 1).bit_length()  # a power of two: an FFT of a prime length is slow
    spec = np.fft.rfft(rng.standard_normal(size))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spec / f ** (exponent / 2), size)[:n].astype(np.float32)
