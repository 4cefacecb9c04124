"""The torch backend: :class:`asr.model.LAS` and :class:`asr.lm.LSTMLM` behind the interface of :mod:`asr.backends`.

Encoder output and decoder state stay torch tensors on the model's device; what the search reads
(log-probs, attention) comes back as numpy arrays, and tokens and row indices go in as numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

# State fields that depend on the utterance only (the speller's encoder key projection): within a step
# rows are refilled from rows of their own utterance, so reordering them would copy identical data.
_UTTERANCE_CONSTANT_FIELDS = frozenset({"keys"})


def _index(idx: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(device)


def take_rows(x: Any, idx: np.ndarray, within_utterance: bool = False) -> Any:
    """Rows ``idx`` of a tensor or of a NamedTuple of batch-first tensors (None stays None)."""
    if x is None:
        return None
    if isinstance(x, Tensor):
        return x.index_select(0, _index(idx, x.device))
    return type(x)(*(
        t if within_utterance and name in _UTTERANCE_CONSTANT_FIELDS else t.index_select(0, _index(idx, t.device))
        for name, t in zip(x._fields, x)
    ))


class TorchModel:
    """An ``asr.model.LAS`` (eval mode) as a search backend, with the log-mel frontend when ``features``
    (an ``asr.features.FeatureConfig``) is given."""

    def __init__(self, model, features=None):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.frontend = None
        self.features = features
        self.warp = 1.0
        self.speaker_mean: Tensor | None = None  # (n_mels,), for a speaker_cmn model; None: each utterance's own
        self.feature_transform = None  # a speaker's asr.adapt.FeatureTransform, or None
        if features is not None:
            from asr.features import LogMel

            self.frontend = LogMel(features).to(self.device).eval()
            self.sample_rate = int(features.sample_rate)
            # Seconds per encoder frame: the feature hop times the listener's time reduction.
            self.frame_seconds = features.hop_length * model.cfg.time_reduction / self.sample_rate

    @classmethod
    def from_dir(cls, model_dir, device: str = "cpu", threads: int | None = None):
        """``(TorchModel, Tokenizer, ExperimentConfig)`` of a model folder on ``device``; ``threads``
        sets torch's CPU threads (process-wide) when given.

        Raises CheckpointError for a bad folder, ConfigError for a device that is unknown or absent.
        """
        from asr.checkpoint import load_las
        from asr.errors import ConfigError

        try:
            device = torch.device(device)
        except RuntimeError:
            raise ConfigError("--device", f"unknown device {device!r} (e.g. cpu, cuda, cuda:1)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device", "CUDA was asked for but no CUDA device is available")
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer, config = load_las(model_dir, map_location=device)
        return cls(model.to(device), config.features), tokenizer, config

    def set_warp(self, warp: float) -> None:
        """Use the filterbank warped by ``warp`` (1.0: the trained one) for waveform inputs from now on."""
        from asr.features import LogMel

        if self.features is None:
            raise ValueError("this model has no frontend to warp")
        if warp != self.warp:
            self.frontend = LogMel(self.features, warp=warp).to(self.device).eval()
            self.warp = warp

    @property
    def speaker_cmn(self) -> bool:
        """Whether the model wants its inputs minus the speaker's mean (``ModelConfig.speaker_cmn``)."""
        return bool(getattr(self.model.cfg, "speaker_cmn", False))

    def set_speaker_mean(self, mean: Any) -> None:
        """Subtract ``mean`` ((n_mels,) log-mel, e.g. :meth:`feature_mean` of one speaker's utterances) from
        every input from now on; None: subtract each utterance's own mean. Only a speaker_cmn model uses it."""
        self.speaker_mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).to(self.device)

    def set_feature_transform(self, transform: Any) -> None:
        """Pass the listener's every input through ``transform`` (an :class:`asr.adapt.FeatureTransform`,
        after the model's normalisation) from now on; None: no transform."""
        self.feature_transform = transform

    def _normalise(self, feats: Tensor, lengths: Tensor) -> Tensor:
        if self.speaker_cmn:
            from asr.model import utterance_mean

            feats = feats - (self.speaker_mean if self.speaker_mean is not None else utterance_mean(feats, lengths))
        return feats

    @torch.no_grad()  # not inference mode: asr.adapt differentiates through these
    def model_inputs(self, waves: list[np.ndarray]) -> list[Tensor]:
        """What ``model.encode`` takes, for :func:`asr.adapt.fit_transform`: per wave ((samples,) float32)
        its log-mel under the current warp, minus the speaker mean for a speaker-CMN model: (T_i, n_mels)."""
        out = []
        for w in waves:
            f, n = self.frontend(torch.as_tensor(w, dtype=torch.float32)[None].to(self.device),
                                 torch.tensor([len(w)], device=self.device))
            out.append(self._normalise(f, n)[0, : int(n[0])].clone())
        return out

    @torch.inference_mode()
    def feature_mean(self, waves: list[np.ndarray]) -> np.ndarray:
        """Mean log-mel over all frames of ``waves`` (each (samples,) float32), under the current warp: (n_mels,)."""
        total, frames = None, 0
        for w in waves:
            f, n = self.frontend(torch.as_tensor(w, dtype=torch.float32)[None].to(self.device),
                                 torch.tensor([len(w)], device=self.device))
            f = f[0, : int(n[0])].double()
            total = f.sum(0) if total is None else total + f.sum(0)
            frames += f.size(0)
        if not frames:
            raise ValueError("no frames to take a mean over")
        return (total / frames).float().cpu().numpy()

    @torch.inference_mode()
    def encode(self, inputs: Any, lengths: Any) -> tuple[Tensor, np.ndarray]:
        """Waveforms (B, samples) or log-mel features (B, T, n_mels), lengths (B,): arrays or tensors.

        Returns enc (B, T', D) on the model's device and enc_lengths (B,) int64 ndarray.
        """
        inputs = torch.as_tensor(inputs).to(self.device)
        lengths = torch.as_tensor(lengths).to(self.device)
        if inputs.dim() == 2:
            inputs, lengths = self.frontend(inputs, lengths)
        elif inputs.dim() != 3:
            raise ValueError(f"expected (batch, samples) or (batch, frames, n_mels), got {tuple(inputs.shape)}")
        inputs = self._normalise(inputs, lengths)
        if self.feature_transform is None:
            enc, enc_lengths = self.model.encode(inputs, lengths)
        else:
            with self.feature_transform.applied(self.model):
                enc, enc_lengths = self.model.encode(inputs, lengths)
        return enc, enc_lengths.cpu().numpy()

    def load_lm(self, lm_dir, tokenizer) -> TorchLM:
        """An LM folder (``asr train-lm``) on this model's device; its tokenizer must equal ``tokenizer``."""
        from asr.errors import ConfigError
        from asr.lm import load_lm, same_vocabulary

        lm, lm_tok = load_lm(lm_dir, map_location=self.device)
        if not same_vocabulary(lm_tok, tokenizer):
            raise ConfigError(lm_dir, "the LM's tokenizer differs from the ASR model's tokenizer")
        return TorchLM(lm)

    @property
    def has_ctc(self) -> bool:
        return self.model.ctc is not None

    @property
    def has_speller(self) -> bool:
        return self.model.decoder is not None

    @torch.inference_mode()
    def ctc_log_probs(self, enc: Tensor) -> np.ndarray:
        return self.model.ctc_log_probs(enc).float().cpu().numpy()

    def enc_mask(self, enc: Tensor, enc_lengths: np.ndarray) -> Tensor:
        lengths = torch.from_numpy(np.asarray(enc_lengths, dtype=np.int64)).to(enc.device)
        return torch.arange(enc.size(1), device=enc.device)[None, :] < lengths[:, None]

    @torch.inference_mode()
    def init_state(self, enc: Tensor, enc_lengths: np.ndarray):
        lengths = torch.from_numpy(np.asarray(enc_lengths, dtype=np.int64)).to(enc.device)
        return self.model.decoder.init_state(enc, lengths)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, state, enc: Tensor, mask: Tensor):
        logp, state, attention = self.model.decoder.step(_index(tokens, enc.device), state, enc, mask)
        return logp.float().cpu().numpy(), state, attention.float().cpu().numpy()

    def take(self, x: Any, idx: np.ndarray, within_utterance: bool = False) -> Any:
        return take_rows(x, idx, within_utterance)


class TorchLM:
    """An ``asr.lm.LSTMLM`` as a fusion LM of the search."""

    def __init__(self, lm):
        self.lm = lm

    def init_state(self, n: int):
        return self.lm.init_state(n)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, state) -> tuple[np.ndarray, Any]:
        logp, state = self.lm.step(torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)), state)
        return logp.float().cpu().numpy(), state

    def take(self, state: Any, idx: np.ndarray) -> Any:
        return take_rows(state, idx)
