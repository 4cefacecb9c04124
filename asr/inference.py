"""Inference API: load a model folder once, then encode and decode batches.

    >>> import asr
    >>> rec = asr.load_model("exp/final")
    >>> nbest = rec.decode_batch(waves, lengths, asr.DecodeOptions(nbest=3))  # (batch, samples)

:class:`Recognizer` holds the model, tokenizer, log-mel frontend and config. ``decode_batch`` runs the
frontend, the listener and :func:`asr.decoding.search`. Long files go through :mod:`asr.transcribe`
(``asr.transcribe.transcribe(rec, "talk.flac")``), manifests through :mod:`asr.decode_manifest`; both
build on this class, never the other way round.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from asr.decoding import DecodeOptions, Hypothesis, search

if TYPE_CHECKING:
    from asr.config import ExperimentConfig
    from asr.tokenizer import Tokenizer


class Recognizer:
    """A model ready for inference: LAS, tokenizer, log-mel frontend and the experiment config."""

    def __init__(self, model, tokenizer: Tokenizer, config: ExperimentConfig, device: str | torch.device = "cpu"):
        from asr.features import LogMel

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.frontend = LogMel(config.features).to(self.device).eval()
        self.sample_rate = int(config.features.sample_rate)
        # Seconds per encoder frame: the feature hop times the listener's time reduction.
        self.frame_seconds = config.features.hop_length * config.model.time_reduction / self.sample_rate

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> Recognizer:
        """Load a model folder (model.pt, config.yaml, tokenizer.model).

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
        model, tokenizer, config = load_las(model_dir, map_location=device)
        return cls(model, tokenizer, config, device)

    @property
    def has_ctc(self) -> bool:
        return getattr(self.model, "ctc", None) is not None

    @torch.inference_mode()
    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run frontend and listener.

        Args:
            inputs: waveforms (batch, samples) at ``sample_rate``, or log-mel features (batch, frames, n_mels).
            lengths: (batch,) valid samples or frames per row.
        Returns:
            enc: (batch, T', D) and enc_lengths: (batch,) long.
        """
        inputs, lengths = inputs.to(self.device), lengths.to(self.device)
        if inputs.dim() == 2:
            inputs, lengths = self.frontend(inputs, lengths)
        elif inputs.dim() != 3:
            raise ValueError(f"expected (batch, samples) or (batch, frames, n_mels), got {tuple(inputs.shape)}")
        return self.model.encode(inputs, lengths)

    @torch.inference_mode()
    def encode_with_ctc(self, waves: torch.Tensor, lengths: torch.Tensor):
        """:meth:`encode` plus CTC log-probs (batch, T', V) on the CPU (None when the model has no CTC head)."""
        enc, enc_lengths = self.encode(waves, lengths)
        ctc = self.model.ctc_log_probs(enc).float().cpu() if self.has_ctc else None
        return enc, enc_lengths.cpu(), ctc

    def decode(self, enc: torch.Tensor, enc_lengths: torch.Tensor, options: DecodeOptions | None = None,
               lm: Any = None, context: Any = None) -> list[list[Hypothesis]]:
        """Search encoder output enc (batch, T', D), enc_lengths (batch,) with :func:`asr.decoding.search`.

        Returns per row up to ``options.nbest`` hypotheses, best first. ``lm``: an LM for fusion or None;
        ``context``: an :class:`asr.context.ContextGraph` of hotwords or None.
        """
        return search(self.model, enc, enc_lengths, options or DecodeOptions(), lm, context)

    @torch.inference_mode()
    def token_confidences(self, enc: torch.Tensor, enc_lengths: torch.Tensor, tokens: list[list[int]],
                          ctc: torch.Tensor | None = None) -> list[np.ndarray]:
        """Posterior probability of each output token, for confidence.

        enc: (batch, T', D), enc_lengths: (batch,); tokens: one hypothesis per row (no SOS/EOS); ctc:
        (batch, T', V) CTC log-probs, needed only by a model without a speller. With a speller, a
        token's confidence is the speller's probability of it given the audio and the tokens before it
        (one teacher-forced pass over the chosen hypothesis); a pure-CTC model uses the mean CTC
        posterior of the token over the frames its forced alignment gives it. Returns per row an array
        (len(tokens) + 1,) float: the tokens' probabilities, then EOS's (1.0 for CTC).
        """
        from asr.align import ctc_token_posteriors
        from asr.tokenizer import EOS_ID, SOS_ID

        if self.model.decoder is None:
            if ctc is None:
                raise ValueError("a model without a speller needs CTC log-probs for confidences")
            return [np.append(ctc_token_posteriors(ctc[i, : int(enc_lengths[i])].numpy(), t), 1.0)
                    for i, t in enumerate(tokens)]
        width = max(len(t) for t in tokens) + 1
        inputs = torch.full((len(tokens), width), EOS_ID, dtype=torch.long)
        targets = torch.full((len(tokens), width), EOS_ID, dtype=torch.long)
        for i, t in enumerate(tokens):
            inputs[i, 0] = SOS_ID
            inputs[i, 1 : len(t) + 1] = torch.tensor(t, dtype=torch.long)
            targets[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        logits, _ = self.model.decoder(enc, enc_lengths.to(enc.device), inputs.to(enc.device))
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        picked = logp.gather(2, targets[:, :, None])[:, :, 0].exp().double().numpy()
        return [picked[i, : len(t) + 1] for i, t in enumerate(tokens)]

    def decode_batch(self, inputs: torch.Tensor, lengths: torch.Tensor, options: DecodeOptions | None = None,
                     lm: Any = None) -> list[list[Hypothesis]]:
        """Decode a padded batch of waveforms (batch, samples) or features (batch, frames, n_mels).

        ``lengths`` (batch,) gives the valid samples or frames of each row. Returns per row up to
        ``options.nbest`` hypotheses, best first, in input order.
        """
        enc, enc_lengths = self.encode(inputs, lengths)
        return self.decode(enc, enc_lengths, options, lm)
