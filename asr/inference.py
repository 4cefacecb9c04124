"""Inference API: load a model folder once, then encode and decode batches.

    >>> import asr
    >>> rec = asr.load_model("exp/final")          # a trained model folder (torch) or an `asr export` folder
    >>> nbest = rec.decode_batch(waves, lengths, asr.DecodeOptions(nbest=3))  # (batch, samples)

:class:`Recognizer` holds a model backend (:mod:`asr.backends`: torch, or onnxruntime for an exported
folder) and the tokenizer. ``decode_batch`` runs the frontend, the listener and
:func:`asr.decoding.search`; the search is the same code whatever the backend. Long files go through
:mod:`asr.transcribe` (``asr.transcribe.transcribe(rec, "talk.flac")``), manifests through
:mod:`asr.decode_manifest`; both build on this class, never the other way round. Nothing here imports
torch: an exported model runs with onnxruntime, numpy, soundfile and sentencepiece alone.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asr.decoding import DecodeOptions, Hypothesis, search

if TYPE_CHECKING:
    from asr.tokenizer import Tokenizer

BACKENDS = ("auto", "torch", "onnx")


def pad_waves(waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded (B, samples) float32 and lengths (B,) int64 of (samples,) arrays: a batch for decoding."""
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    padded = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
    for i, w in enumerate(waves):
        padded[i, : len(w)] = w
    return padded, lengths


class Recognizer:
    """A model ready for inference: a backend (torch or onnxruntime) and its tokenizer.

    ``sample_rate`` is the audio rate the model takes; ``frame_seconds`` the seconds per encoder frame
    (feature hop times the listener's time reduction). ``config`` is the experiment config of a torch
    model (None for an exported one, whose settings are in its export.json).
    """

    def __init__(self, backend: Any, tokenizer: Tokenizer, config: Any = None):
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.sample_rate = backend.sample_rate
        self.frame_seconds = backend.frame_seconds

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "cpu", backend: str = "auto",
                 threads: int | None = None) -> Recognizer:
        """Load a model folder (model.pt, config.yaml, tokenizer.model) or an exported folder (export.json).

        ``backend``: "auto" (onnx for an exported folder, else torch), "torch" or "onnx". ``threads``:
        CPU threads (torch's, process-wide, or onnxruntime's intra-op threads; None: the default). Raises CheckpointError for a bad or mismatched
        folder, ConfigError for a backend or device that cannot run it.
        """
        from asr.backends.onnx import is_export_dir
        from asr.errors import ConfigError

        if backend not in BACKENDS:
            raise ConfigError("--backend", f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
        exported = is_export_dir(model_dir)
        if backend == "auto":
            backend = "onnx" if exported else "torch"
        if backend == "onnx":
            from asr.backends.onnx import OnnxModel
            from asr.tokenizer import Tokenizer

            if not exported and Path(model_dir, "model.pt").is_file():
                raise ConfigError(model_dir, "is a torch model folder: export it first (asr export) for --backend onnx")
            model = OnnxModel(model_dir, threads=threads)
            tokenizer = Tokenizer.load(Path(model_dir) / "tokenizer.model")
            if tokenizer.vocab_size != model.vocab_size:
                from asr.errors import CheckpointError

                raise CheckpointError(model_dir, f"tokenizer has {tokenizer.vocab_size} pieces but the exported "
                                      f"model has {model.vocab_size}")
            return cls(model, tokenizer)
        if exported:
            raise ConfigError(model_dir, "is an exported (ONNX) folder: use --backend onnx (or auto)")
        from asr.backends.torch_backend import TorchModel

        model, tokenizer, config = TorchModel.from_dir(model_dir, device, threads)
        return cls(model, tokenizer, config)

    @property
    def model(self) -> Any:
        """The backend (kept under this name for callers that read ``rec.model``)."""
        return self.backend

    @property
    def frontend(self) -> Any:
        return self.backend.frontend

    @property
    def has_ctc(self) -> bool:
        return self.backend.has_ctc

    @property
    def has_speller(self) -> bool:
        return self.backend.has_speller

    def encode(self, inputs: Any, lengths: Any) -> tuple[Any, np.ndarray]:
        """Run frontend and listener.

        Args:
            inputs: waveforms (batch, samples) at ``sample_rate``, or log-mel features (batch, frames, n_mels);
                a numpy array or a torch tensor.
            lengths: (batch,) valid samples or frames per row.
        Returns:
            enc: (batch, T', D) in the backend's array type, and enc_lengths: (batch,) int64 ndarray.
        """
        return self.backend.encode(inputs, lengths)

    def encode_with_ctc(self, waves: Any, lengths: Any) -> tuple[Any, np.ndarray, np.ndarray | None]:
        """:meth:`encode` plus CTC log-probs (batch, T', V) float32 ndarray (None without a CTC head)."""
        enc, enc_lengths = self.encode(waves, lengths)
        ctc = self.backend.ctc_log_probs(enc) if self.has_ctc else None
        return enc, enc_lengths, ctc

    def decode(self, enc: Any, enc_lengths: Any, options: DecodeOptions | None = None,
               lm: Any = None, context: Any = None) -> list[list[Hypothesis]]:
        """Search encoder output enc (batch, T', D), enc_lengths (batch,) with :func:`asr.decoding.search`.

        Returns per row up to ``options.nbest`` hypotheses, best first. ``lm``: an LM for fusion or None;
        ``context``: an :class:`asr.context.ContextGraph` of hotwords or None.
        """
        return search(self.backend, enc, enc_lengths, options or DecodeOptions(), lm, context)

    def token_confidences(self, enc: Any, enc_lengths: Any, tokens: list[list[int]],
                          ctc: np.ndarray | None = None) -> list[np.ndarray]:
        """Posterior probability of each output token, for confidence.

        enc: (batch, T', D) in the backend's array type, enc_lengths: (batch,); tokens: one hypothesis per
        row (no SOS/EOS); ctc: (batch, T', V) CTC log-probs, needed only by a model without a speller.
        With a speller, a token's confidence is the speller's probability of it given the audio and the
        tokens before it (the chosen hypothesis fed back step by step, through the same backend step as
        the search, so torch and onnxruntime agree); a pure-CTC model uses the mean CTC posterior of the
        token over the frames its forced alignment gives it. Returns per row an array (len(tokens) + 1,)
        float64: the tokens' probabilities, then EOS's (1.0 for CTC).
        """
        from asr.align import ctc_token_posteriors
        from asr.tokenizer import EOS_ID, SOS_ID

        lens = np.asarray(enc_lengths, dtype=np.int64).reshape(-1)
        if not self.backend.has_speller:
            if ctc is None:
                raise ValueError("a model without a speller needs CTC log-probs for confidences")
            return [np.append(ctc_token_posteriors(np.asarray(ctc[i, : int(lens[i])]), t), 1.0)
                    for i, t in enumerate(tokens)]
        n, width = len(tokens), max(len(t) for t in tokens) + 1
        inputs = np.full((n, width), EOS_ID, dtype=np.int64)
        targets = np.full((n, width), EOS_ID, dtype=np.int64)
        for i, t in enumerate(tokens):
            inputs[i, 0] = SOS_ID
            inputs[i, 1 : len(t) + 1] = t
            targets[i, : len(t)] = t
        mask = self.backend.enc_mask(enc, lens)
        state = self.backend.init_state(enc, lens)
        picked = np.zeros((n, width), dtype=np.float64)
        rows = np.arange(n)
        for j in range(width):
            logp, state, _ = self.backend.step(inputs[:, j], state, enc, mask)
            picked[:, j] = np.exp(logp[rows, targets[:, j]].astype(np.float64))
        return [picked[i, : len(t) + 1] for i, t in enumerate(tokens)]

    def decode_batch(self, inputs: Any, lengths: Any, options: DecodeOptions | None = None,
                     lm: Any = None) -> list[list[Hypothesis]]:
        """Decode a padded batch of waveforms (batch, samples) or features (batch, frames, n_mels).

        ``lengths`` (batch,) gives the valid samples or frames of each row. Returns per row up to
        ``options.nbest`` hypotheses, best first, in input order.
        """
        options = options or DecodeOptions()
        with self.precision(options):
            enc, enc_lengths = self.encode(inputs, lengths)
            return self.decode(enc, enc_lengths, options, lm)

    def precision(self, options: DecodeOptions):
        """The autocast context of ``options.dtype`` for a torch backend (fp32 or onnx: a no-op)."""
        device = getattr(self.backend, "device", None)
        if device is None or options.dtype == "fp32":
            return contextlib.nullcontext()
        from asr.ops import amp_dtype, autocast

        return autocast(amp_dtype(options.dtype, device), device)

    def load_lm(self, lm_dir: str | Path) -> Any:
        """The fusion LM for this backend: an LM folder (torch) or the LM inside the export (onnx)."""
        return self.backend.load_lm(lm_dir, self.tokenizer)
