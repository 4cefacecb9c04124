"""The log-mel frontend and CMVN in numpy, from the constants an export saved (``frontend.npz``).

The same arithmetic as :class:`asr.features.LogMel`: frame ``t`` is centred on sample ``t * hop``
with zero padding at both ends, only the ``win_length`` non-zero window samples are framed, the power
spectrum is cut to the FFT bins the mel filters touch, and every row is computed from its own valid
samples, so a batch gives the features of its utterances alone. No torch.
"""

from __future__ import annotations

import numpy as np


class NumpyFrontend:
    """Waveforms -> normalised log-mel features (what the listener graph takes).

    window: (win_length,) Hann window; mel: (n_bins, n_mels) filterbank; cmvn_mean, cmvn_istd: (n_mels,);
    features: the ``FeatureConfig`` fields as a dict; utterance_cmn: subtract each utterance's own mean.
    """

    def __init__(self, window: np.ndarray, mel: np.ndarray, cmvn_mean: np.ndarray, cmvn_istd: np.ndarray,
                 features: dict, utterance_cmn: bool):
        self.window = np.asarray(window, dtype=np.float32)
        self.mel = np.asarray(mel, dtype=np.float32)
        self.cmvn_mean = np.asarray(cmvn_mean, dtype=np.float32)
        self.cmvn_istd = np.asarray(cmvn_istd, dtype=np.float32)
        self.n_fft = int(features["n_fft"])
        self.win_length = int(features["win_length"])
        self.hop = int(features["hop_length"])
        self.log_floor = float(features["log_floor"])
        self.n_mels = self.mel.shape[1]
        self.utterance_cmn = utterance_cmn
        self.pad_left = self.n_fft // 2 - (self.n_fft - self.win_length) // 2

    def num_frames(self, samples: int) -> int:
        return 1 + samples // self.hop if samples > 0 else 0

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """Log-mel of one utterance: (samples,) -> (frames, n_mels) float32."""
        wave = np.asarray(wave, dtype=np.float32)
        frames = self.num_frames(wave.size)
        if frames == 0:
            return np.zeros((0, self.n_mels), np.float32)
        padded = np.zeros(self.pad_left + (frames - 1) * self.hop + self.win_length, np.float32)
        usable = min(wave.size, padded.size - self.pad_left)
        padded[self.pad_left : self.pad_left + usable] = wave[:usable]
        framed = np.lib.stride_tricks.sliding_window_view(padded, self.win_length)[:: self.hop][:frames]
        spec = np.fft.rfft(framed * self.window, n=self.n_fft, axis=-1)[:, : self.mel.shape[0]]
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        return np.log(np.maximum(power @ self.mel, self.log_floor))

    def normalize(self, feats: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """CMVN of padded log-mel features (B, T, n_mels), as ``LAS.encode`` does it; zero past each length."""
        out = np.zeros(feats.shape, np.float32)
        for i, n in enumerate(np.asarray(lengths).tolist()):
            f = feats[i, :n]
            mean = (f.mean(axis=0, keepdims=True) if n else 0.0) if self.utterance_cmn else self.cmvn_mean
            out[i, :n] = (f - mean) * self.cmvn_istd
        return out

    def __call__(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised, zero-padded features (B, T, n_mels) float32 and frame lengths (B,) int64."""
        feats = [self.log_mel(w) for w in waves]
        lengths = np.array([f.shape[0] for f in feats], dtype=np.int64)
        out = np.zeros((len(feats), int(lengths.max(initial=0)), self.n_mels), np.float32)
        for i, f in enumerate(feats):
            out[i, : len(f)] = f
        return self.normalize(out, lengths), lengths
