"""On-the-fly training augmentation: new speakers, rooms and noise for every utterance of every epoch.

Applied per utterance by the training dataset (:class:`asr.data.dataset.AsrDataset` given an
:class:`Augmenter`), never to validation or decoding. Each item's draws come from a generator seeded
by ``(training seed, epoch, item index)``: a counter-based seed rather than a shared stream, so the same
utterance in the same epoch is augmented the same way whatever the number of DataLoader workers, the
DDP rank or the order of loading, and a resumed run (which restores the epoch and the sampler's
position) continues with exactly the augmentation it would have had.

What can be applied depends on where the features come from:

=====================  ===============================================  ==================================
augmentation           audio source (``feature_source: audio``)         cached features (``asr features``)
=====================  ===============================================  ==================================
VTLP ``vtlp``          warped mel filterbank (a bank of matrices)       the same warp applied on the mel
                                                                        axis (interpolation between bands)
speed ``speed``        resampling (tempo, pitch, formants together)     VTLP by the factor + tempo
tempo ``tempo``        frames resampled after the log-mel               frames resampled
pitch ``pitch``        resampling, then tempo restored on the frames     --
reverberation          convolution with a pyroomacoustics RIR           the RIR's mel-band energy envelope
                                                                        convolved with the mel power
noise, babble          added to the wave at a random SNR                added to the mel power
=====================  ===============================================  ==================================

Vocal-tract-length perturbation (Jaitly and Hinton, 2013) warps the frequency axis piecewise linearly
by a factor ``alpha`` (:func:`asr.features.warp_frequencies`): the apparent speaker's formants move by
``alpha`` at almost no cost. On mel power the additive and convolutive models are exact in expectation
(speech and noise are uncorrelated; a room smears each band's energy by the RIR's energy envelope), the
standard approximations of feature-domain augmentation.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asr.data.effects import add_noise, coloured_noise, reverberate

log = logging.getLogger(__name__)

VTLP_STEP = 0.01  # warp factors are rounded to this grid so that each warped matrix is built once


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation settings; the defaults switch everything off.

    Ranges are half-widths: ``vtlp=0.1`` draws the warp factor from U[0.9, 1.1]. Probabilities are per
    utterance. SNRs are in dB, drawn uniformly from [snr_low, snr_high].
    """

    vtlp: float = 0.0  # warp factor alpha ~ U[1 - vtlp, 1 + vtlp]
    speed: float = 0.0  # Kaldi speed factor ~ U[1 - speed, 1 + speed] (tempo and pitch together)
    tempo: float = 0.0  # tempo factor ~ U[1 - tempo, 1 + tempo], pitch kept
    pitch: float = 0.0  # semitones ~ U[-pitch, pitch], duration kept (audio source only)
    reverb_prob: float = 0.0
    noise_prob: float = 0.0  # coloured noise, spectral slope ~ U[-1, 2] (blue .. brown)
    babble_prob: float = 0.0  # 1-3 other training utterances mixed in
    snr_low: float = 10.0
    snr_high: float = 30.0
    rir_bank: int = 64  # simulated rooms, computed once (and cached on disk when rir_cache is set)
    rir_cache: str = ""  # folder for the RIR bank file; "" keeps it in memory only
    seed: int = 0  # added to the training seed

    def __post_init__(self) -> None:
        for name in ("vtlp", "speed", "tempo"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {getattr(self, name)}")
        if not 0 <= self.pitch <= 12:
            raise ValueError(f"pitch must be in [0, 12] semitones, got {self.pitch}")
        for name in ("reverb_prob", "noise_prob", "babble_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.snr_low > self.snr_high:
            raise ValueError(f"snr_low {self.snr_low} must not exceed snr_high {self.snr_high}")
        if self.rir_bank < 1:
            raise ValueError(f"rir_bank must be positive, got {self.rir_bank}")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation can change an utterance."""
        return any((self.vtlp, self.speed, self.tempo, self.pitch, self.reverb_prob, self.noise_prob,
                    self.babble_prob))


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item's augmentation: a pure function of (seed, epoch, index)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index, 0xA06])


# -- feature-domain operations ---------------------------------------------------------------------


def change_tempo(feats: torch.Tensor, factor: float) -> torch.Tensor:
    """Play ``feats (T, F)`` ``factor`` times faster by linear interpolation between frames.

    Returns ``(max(1, round(T / factor)), F)``.
    """
    frames = feats.shape[0]
    out = max(1, round(frames / factor))
    if out == frames or frames < 2:
        return feats if out == frames else feats[:1].expand(out, -1).clone()
    pos = torch.arange(out, dtype=torch.float64) * ((frames - 1) / max(out - 1, 1))
    lo = pos.floor().long().clamp(max=frames - 1)
    hi = (lo + 1).clamp(max=frames - 1)
    frac = (pos - lo.double()).to(feats.dtype)[:, None]
    return torch.lerp(feats[lo], feats[hi], frac)


@functools.lru_cache(maxsize=128)
def _mel_warp(feature_cfg, alpha: float) -> torch.Tensor:
    from asr.features import mel_warp_matrix

    return torch.from_numpy(mel_warp_matrix(feature_cfg, alpha))


def warp_mel(feats: torch.Tensor, feature_cfg, alpha: float) -> torch.Tensor:
    """VTLP on log-mel ``feats (T, n_mels)``: each band takes the log energy found at its warped frequency."""
    return feats @ _mel_warp(feature_cfg, round(alpha / VTLP_STEP) * VTLP_STEP)


@functools.lru_cache(maxsize=8)
def _mel_basis(feature_cfg) -> np.ndarray:
    from asr.features import mel_matrix

    return mel_matrix(feature_cfg).astype(np.float64)  # (bins, n_mels)


def noise_mel_profile(feature_cfg, exponent: float) -> np.ndarray:
    """Mel-band power of noise whose spectrum falls as ``1 / f**exponent``: (n_mels,) float64."""
    freqs = np.fft.rfftfreq(feature_cfg.n_fft, 1.0 / feature_cfg.sample_rate)
    psd = np.maximum(freqs, freqs[1]) ** -exponent
    return psd @ _mel_basis(feature_cfg)


def mix_mel(feats: torch.Tensor, noise_power: np.ndarray, snr_db: float, floor: float) -> torch.Tensor:
    """Add ``noise_power (T, n_mels)`` (mel power) to log-mel ``feats (T, n_mels)`` at ``snr_db``.

    The SNR is the ratio of the utterance's mean band power to the noise's, measured on the mel bands.
    """
    power = np.exp(feats.double().numpy())
    scale = power.sum(axis=1).mean() / max(noise_power.sum(axis=1).mean(), 1e-30) / 10 ** (snr_db / 10)
    mixed = np.log(np.maximum(power + scale * noise_power, floor))
    return torch.from_numpy(mixed.astype(np.float32))


def reverb_mel(feats: torch.Tensor, envelope: np.ndarray, floor: float) -> torch.Tensor:
    """Convolve each mel band's power of ``feats (T, n_mels)`` with ``envelope (L, n_mels)`` (kept at T)."""
    power = np.exp(feats.double().numpy())
    frames = power.shape[0]
    n = frames + envelope.shape[0] - 1
    nfft = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(power, nfft, axis=0) * np.fft.rfft(envelope, nfft, axis=0), nfft, axis=0)
    wet = np.maximum(wet[:frames], 0.0)
    # The same total energy as the dry utterance: a room changes the timbre and smear, not the level.
    wet *= power.sum() / max(wet.sum(), 1e-30)
    return torch.from_numpy(np.log(np.maximum(wet, floor)).astype(np.float32))


# -- room impulse responses -------------------------------------------------------------------------


def simulate_rirs(count: int, seed: int, rate: int = 16000) -> list[np.ndarray]:
    """``count`` room impulse responses from pyroomacoustics' image-source model of shoebox rooms.

    Rooms of 3-10 m x 3-8 m x 2.4-4 m with RT60 0.15-0.8 s, source and microphone at random places at
    least 0.5 m from the walls. Each RIR starts at its direct path and is cut at RT60. Returns (n,) float32.
    """
    try:
        import pyroomacoustics as pra
    except ImportError:
        from asr.errors import ConfigError

        raise ConfigError("augment.reverb_prob", "reverberation needs pyroomacoustics: "
                                                 "pip install 'asr[augment]'") from None
    rng = np.random.default_rng([seed, 0x5155])
    rirs = []
    while len(rirs) < count:
        dims = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.4, 4)])
        rt60 = rng.uniform(0.15, 0.8)
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # an RT60 this room cannot have
            continue
        # A low order keeps the bank cheap; the late tail is what a recogniser must learn to ignore.
        room = pra.ShoeBox(dims, fs=rate, materials=pra.Material(absorption), max_order=min(max_order, 12))
        room.add_source(rng.uniform(0.5, dims - 0.5))
        room.add_microphone(rng.uniform(0.5, dims - 0.5))
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float64)
        rir = rir[int(np.argmax(np.abs(rir))):][: int(rt60 * rate) + 1]
        rirs.append((rir / max(np.sqrt(np.sum(rir ** 2)), 1e-12)).astype(np.float32))
    return rirs


def rir_envelope(rir: np.ndarray, feature_cfg) -> np.ndarray:
    """Mel-band energy envelope of ``rir (n,)`` at the feature hop: (L, n_mels) float64, L = frames."""
    hop, bins = feature_cfg.hop_length, feature_cfg.n_fft // 2 + 1
    frames = max(1, math.ceil(rir.size / hop))
    padded = np.zeros(frames * hop, dtype=np.float64)
    padded[: rir.size] = rir
    # Energy of each hop-long slice of the RIR spread over frequency by its spectrum: a slice's FFT
    # over n_fft samples gives the band gains of the reflections arriving in that frame.
    spec = np.abs(np.fft.rfft(padded.reshape(frames, hop), feature_cfg.n_fft, axis=1)) ** 2
    env = spec[:, :bins] @ _mel_basis(feature_cfg)
    return env / max(env[0].max(), 1e-30)


# -- the augmenter ----------------------------------------------------------------------------------


class Augmenter:
    """Per-utterance augmentation for a training dataset.

    ``features(feats, rng, others)`` augments cached log-mel features; ``wave(wave, rng, others)``
    augments a waveform before its log-mel and returns the VTLP factor and the tempo to apply after it.
    ``others(k, rng)`` returns ``k`` other training utterances (features or waves) for babble.
    """

    def __init__(self, cfg: AugmentConfig, feature_cfg, seed: int = 0):
        self.cfg = cfg
        self.feature_cfg = feature_cfg
        self.seed = int(seed) + cfg.seed
        self._rirs: list[np.ndarray] | None = None
        self._envelopes: list[np.ndarray] | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_envelopes"] = None  # rebuilt from the RIRs in each worker
        return state

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of item ``index`` in ``epoch``."""
        return item_rng(self.seed, epoch, index)

    # The bank is built lazily, so that building a dataset stays cheap and tests without reverb never
    # import pyroomacoustics.
    def rirs(self) -> list[np.ndarray]:
        """The RIR bank (built once; read from ``rir_cache`` when there)."""
        if self._rirs is None:
            self._rirs = _load_or_simulate(self.cfg, self.feature_cfg.sample_rate)
        return self._rirs

    def envelopes(self) -> list[np.ndarray]:
        """The RIR bank as mel-band energy envelopes, for cached features."""
        if self._envelopes is None:
            self._envelopes = [rir_envelope(r, self.feature_cfg) for r in self.rirs()]
        return self._envelopes

    def _snr(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.cfg.snr_low, self.cfg.snr_high))

    def features(self, feats: torch.Tensor, rng: np.random.Generator, others=None) -> torch.Tensor:
        """Augment cached log-mel ``feats (T, n_mels)`` -> ``(T', n_mels)``; T' = T unless tempo or speed."""
        c, fc = self.cfg, self.feature_cfg
        floor = fc.log_floor
        alpha, tempo = 1.0, 1.0
        if c.speed:
            k = float(rng.uniform(1 - c.speed, 1 + c.speed))
            alpha, tempo = alpha * k, tempo * k
        if c.vtlp:
            alpha *= float(rng.uniform(1 - c.vtlp, 1 + c.vtlp))
        if c.tempo:
            tempo *= float(rng.uniform(1 - c.tempo, 1 + c.tempo))
        if alpha != 1.0:
            feats = warp_mel(feats, fc, alpha)
        if c.reverb_prob and rng.random() < c.reverb_prob:
            envs = self.envelopes()
            feats = reverb_mel(feats, envs[int(rng.integers(len(envs)))], floor)
        if c.noise_prob and rng.random() < c.noise_prob:
            profile = noise_mel_profile(fc, float(rng.uniform(-1, 2)))
            # Chi-square-like spread of a noise's short-time band power around its mean
            jitter = rng.gamma(4.0, 0.25, size=feats.shape)
            feats = mix_mel(feats, profile[None, :] * jitter, self._snr(rng), floor)
        if c.babble_prob and others is not None and rng.random() < c.babble_prob:
            babble = np.zeros(tuple(feats.shape), dtype=np.float64)
            for other in others(int(rng.integers(1, 4)), rng):
                babble += _tile(np.exp(other.double().numpy()), feats.shape[0], rng)
            feats = mix_mel(feats, babble, self._snr(rng), floor)
        if tempo != 1.0:
            feats = change_tempo(feats, tempo)
        return feats

    def wave(self, wave: np.ndarray, rng: np.random.Generator, others=None) -> tuple[np.ndarray, float, float]:
        """Augment a waveform ``(n,)`` float32 before its log-mel.

        Returns the new wave ``(n',)``, the VTLP factor for the filterbank and the tempo factor to apply
        to the frames after the log-mel.
        """
        from asr.audio import change_speed

        c = self.cfg
        alpha, tempo = 1.0, 1.0
        if c.speed:
            wave = change_speed(wave, float(rng.uniform(1 - c.speed, 1 + c.speed)))
        if c.pitch:
            ratio = 2 ** (float(rng.uniform(-c.pitch, c.pitch)) / 12)
            # sox's `pitch`: resample (pitch and tempo move together), then undo the tempo on the frames
            wave = change_speed(wave, ratio)
            tempo /= ratio
        if c.vtlp:
            alpha = float(rng.uniform(1 - c.vtlp, 1 + c.vtlp))
        if c.tempo:
            tempo *= float(rng.uniform(1 - c.tempo, 1 + c.tempo))
        if c.reverb_prob and rng.random() < c.reverb_prob:
            rirs = self.rirs()
            wave = reverberate(wave, rirs[int(rng.integers(len(rirs)))])
        if c.noise_prob and rng.random() < c.noise_prob:
            wave = add_noise(wave, coloured_noise(wave.size, float(rng.uniform(-1, 2)), rng), self._snr(rng))
        if c.babble_prob and others is not None and rng.random() < c.babble_prob:
            babble = np.zeros(wave.size, dtype=np.float32)
            for other in others(int(rng.integers(1, 4)), rng):
                babble += _tile(np.asarray(other, dtype=np.float32), wave.size, rng)
            wave = add_noise(wave, babble, self._snr(rng))
        return wave.astype(np.float32, copy=False), alpha, tempo


def _tile(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` repeated along axis 0 to ``n`` rows from a random start: a stream of babble of length n."""
    reps = math.ceil(n / max(x.shape[0], 1)) + 1
    long = np.concatenate([x] * reps, axis=0)
    start = int(rng.integers(max(x.shape[0], 1)))
    return long[start:start + n]


def _load_or_simulate(cfg: AugmentConfig, rate: int) -> list[np.ndarray]:
    key = hashlib.sha1(f"{cfg.rir_bank}:{cfg.seed}:{rate}:v1".encode()).hexdigest()[:12]
    path = Path(cfg.rir_cache) / f"rirs-{key}.npz" if cfg.rir_cache else None
    if path is not None and path.exists():
        try:
            with np.load(path) as z:
                return [z[f"r{i}"] for i in range(cfg.rir_bank)]
        except (OSError, ValueError, KeyError):
            log.warning("%s: unreadable RIR bank; simulating it again", path)
    rirs = simulate_rirs(cfg.rir_bank, cfg.seed, rate)
    if path is not None:
        from asr.io_utils import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{f"r{i}": r for i, r in enumerate(rirs)})
    return rirs
