"""Inference API: load a model folder once, then transcribe files, arrays or batches.

    >>> import asr
    >>> rec = asr.load_model("exp/final")
    >>> for seg in rec.transcribe("meeting.wav"):
    ...     print(f"{seg.start:.2f}-{seg.end:.2f} {seg.text}")

:class:`Recognizer` holds the model, tokenizer, log-mel frontend and config. ``transcribe`` runs the
streaming long-form pipeline of :mod:`asr.transcribe`; ``decode_batch`` decodes a padded batch directly.
Word times come from aligning the output tokens to the CTC posteriors (:func:`ctc_forced_align`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from asr.tokenizer import BLANK_ID

if TYPE_CHECKING:
    from asr.config import ExperimentConfig
    from asr.decoding import DecodeOptions, Hypothesis
    from asr.tokenizer import Tokenizer
    from asr.transcribe import TranscribeConfig, VadConfig

WORD_BOUNDARY = "\u2581"  # sentencepiece marks the first piece of a word with it


@dataclass
class Segment:
    """A stretch of recognised speech. Times are seconds from the start of the input."""

    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float  # mean log-probability per output token (end of sentence included)
    words: list[tuple[str, float, float]] = field(default_factory=list)  # (word, start, end)
    guards: dict[str, int] = field(default_factory=dict)  # decoding guards that fired (loops, length)


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

    @torch.inference_mode()
    def decode_encoded(self, enc: torch.Tensor, enc_lengths: torch.Tensor, options: DecodeOptions) -> list[Hypothesis]:
        """Best hypothesis per row of encoder output enc (batch, T', D), enc_lengths (batch,)."""
        from asr.decoding import beam_search, greedy_search

        enc_lengths = enc_lengths.to(enc.device)
        if options.beam_size <= 1:
            return greedy_search(self.model, enc, enc_lengths, options)
        return [nbest[0] for nbest in beam_search(self.model, enc, enc_lengths, options)]

    def decode_batch(
        self, inputs: torch.Tensor, lengths: torch.Tensor, options: DecodeOptions | None = None
    ) -> list[Hypothesis]:
        """Decode a padded batch of waveforms (batch, samples) or features (batch, frames, n_mels).

        ``lengths`` (batch,) gives the valid samples or frames of each row. Returns one best
        Hypothesis per row, in order.
        """
        from asr.decoding import DecodeOptions

        enc, enc_lengths = self.encode(inputs, lengths)
        return self.decode_encoded(enc, enc_lengths, options or DecodeOptions())

    def blank_cut(self, window: np.ndarray, lo: int, hi: int) -> int:
        """Where to cut ``window`` (samples,): inside the longest CTC blank run within ``[lo, hi]``.

        Ties go to the later run, keeping pieces long. Within the run the cut goes to the quietest
        10 ms: a confident CTC head's runs are the pauses between words, and a young one that predicts
        blank almost everywhere then still cuts in a pause rather than in the middle of the run.
        Without a CTC head, or without any blank frame in the range, the quietest frame is used.
        """
        from asr.transcribe import energy_cut

        if not self.has_ctc:
            return energy_cut(window, lo, hi)
        waves = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None]
        _, enc_lengths, ctc = self.encode_with_ctc(waves, torch.tensor([len(window)]))
        n = int(enc_lengths[0])
        blank = (ctc[0, :n].argmax(-1) == BLANK_ID).numpy()
        per_frame = len(window) / max(n, 1)
        run = longest_run(blank, int(np.ceil(lo / per_frame)), int(hi / per_frame))
        if run is None:
            return energy_cut(window, lo, hi)
        return energy_cut(window, int(run[0] * per_frame), int(run[1] * per_frame))

    def transcribe(
        self,
        audio: str | Path | np.ndarray,
        options: DecodeOptions | None = None,
        config: TranscribeConfig | None = None,
        vad: VadConfig | None = None,
        sample_rate: int | None = None,
    ) -> list[Segment]:
        """Transcribe a file (read in blocks, any length) or an array (samples,) at ``sample_rate``.

        Returns the segments in time order; silence gives an empty list.
        """
        from asr.decoding import DecodeOptions
        from asr.transcribe import TranscribeConfig, VadConfig, iter_array_blocks, iter_segments

        config = config or TranscribeConfig()
        if isinstance(audio, (str, Path)):
            from asr.audio import iter_blocks

            blocks = iter_blocks(audio, config.block_seconds, self.sample_rate)
        else:
            blocks = iter_array_blocks(self._as_mono(audio, sample_rate), config.block_seconds, self.sample_rate)
        return list(iter_segments(self, blocks, options or DecodeOptions(), config, vad or VadConfig()))

    def _as_mono(self, audio: np.ndarray, sample_rate: int | None) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2:  # (samples, channels), as soundfile returns it
            audio = audio.mean(axis=1)
        if audio.ndim != 1:
            raise ValueError(f"expected audio (samples,) or (samples, channels), got shape {audio.shape}")
        if sample_rate is not None and sample_rate != self.sample_rate:
            from asr.audio import resample

            audio = resample(audio, sample_rate, self.sample_rate)
        return audio


def longest_run(mask: np.ndarray, lo: int, hi: int) -> tuple[int, int] | None:
    """Longest run of True in ``mask[lo:hi]`` as ``(start, end)`` (end exclusive); the later one on ties."""
    lo, hi = max(lo, 0), min(hi, len(mask))
    best, start = None, None
    for i in range(lo, hi + 1):
        on = i < hi and bool(mask[i])
        if on and start is None:
            start = i
        elif not on and start is not None:
            if best is None or i - start >= best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def ctc_greedy(log_probs: np.ndarray) -> list[int]:
    """Best-path CTC output of log_probs (T, V): argmax, merge repeats, drop blanks."""
    best = log_probs.argmax(-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return [int(t) for t in best[keep] if t != BLANK_ID]


def ctc_forced_align(log_probs: np.ndarray, tokens: list[int]) -> list[tuple[int, int]] | None:
    """Viterbi alignment of ``tokens`` to CTC posteriors log_probs (T, V).

    Returns one ``(first_frame, last_frame)`` span (inclusive) per token, or None when the tokens cannot
    fit into T frames (each token needs a frame, and a repeated token a blank between).
    """
    n_tok = len(tokens)
    if n_tok == 0:
        return []
    repeats = sum(a == b for a, b in zip(tokens, tokens[1:]))
    n_frames = log_probs.shape[0]
    if n_frames < n_tok + repeats:
        return None
    states = np.full(2 * n_tok + 1, BLANK_ID)
    states[1::2] = tokens
    emit = log_probs[:, states].astype(np.float64)  # (T, S)
    # A token may be entered from the token before it (skipping the blank) unless both are equal.
    skip = np.zeros(len(states), dtype=bool)
    skip[3::2] = states[3::2] != states[1:-2:2]
    score = np.full(len(states), -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((n_frames, len(states)), dtype=np.int8)
    for t in range(1, n_frames):
        from_prev = np.concatenate([[-np.inf], score[:-1]])
        from_skip = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        cand = np.stack([score, from_prev, from_skip])
        back[t] = cand.argmax(0)
        score = cand[back[t], np.arange(len(states))] + emit[t]
    s = len(states) - 1 if len(states) == 1 or score[-1] >= score[-2] else len(states) - 2
    spans: list[list[int]] = [[-1, -1] for _ in tokens]
    for t in range(n_frames - 1, -1, -1):
        if s % 2 == 1:
            k = (s - 1) // 2
            spans[k][0] = t
            if spans[k][1] < 0:
                spans[k][1] = t
        s -= int(back[t, s])
    return [(a, b) for a, b in spans]


def word_alignment(
    log_probs: np.ndarray, tokens: list[int], tokenizer: Tokenizer, frame_seconds: float, offset: float = 0.0
) -> list[tuple[str, float, float, list[int]]]:
    """Group tokens into words and time them from the CTC alignment.

    Args:
        log_probs: (T, V) CTC log-probabilities of one segment.
        tokens: output token ids of the segment.
        frame_seconds: seconds per encoder frame; offset: segment start in seconds.
    Returns:
        ``[(word, start, end, word_tokens)]``; empty when the tokens do not fit the frames.
    """
    spans = ctc_forced_align(log_probs, tokens)
    if not spans:
        return []
    words: list[tuple[str, float, float, list[int]]] = []
    group: list[int] = []
    for i, tok in enumerate(tokens):
        if group and tokenizer.id_to_piece(tok).startswith(WORD_BOUNDARY):
            words.append(_word(group, tokens, spans, tokenizer, frame_seconds, offset))
            group = []
        group.append(i)
    words.append(_word(group, tokens, spans, tokenizer, frame_seconds, offset))
    return [w for w in words if w[0]]


def _word(group, tokens, spans, tokenizer, frame_seconds, offset):
    ids = [tokens[i] for i in group]
    start = offset + spans[group[0]][0] * frame_seconds
    end = offset + (spans[group[-1]][1] + 1) * frame_seconds
    return tokenizer.decode(ids).strip(), start, end, ids
