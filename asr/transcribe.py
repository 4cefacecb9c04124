"""Long-form transcription as a stream: read blocks, find speech, cut segments, decode, stitch, write.

The steps, each a small piece that holds bounded state::

    blocks (iter_blocks / stdin PCM) -> EnergyVad -> Segmenter -> decode_chunks -> stitch -> writers

* :class:`EnergyVad` marks 10 ms frames as speech when their energy is some dB above an adaptive noise
  floor, and closes a region after ``min_silence`` of silence (short clicks are dropped).
* :class:`Segmenter` keeps only the audio of the open region (plus the padding before it) and cuts a region
  longer than ``max_segment`` inside the longest run of CTC blanks before the limit (at its quietest
  10 ms); the next piece starts ``overlap`` seconds before the cut.
* :func:`decode_chunks` decodes a batch of pieces at once and aligns the output tokens to encoder frames
  with CTC, which gives word times. Pieces with a very low score, or with an all-blank CTC output and an
  unsure decoder, are dropped (:func:`is_speech`), so noise that passed the VAD does not invent words;
  silence never reaches the decoder at all.
* :func:`stitch` removes from an overlapping piece the words the previous piece already covered.
* :class:`SegmentWriter` streams txt/json/srt/vtt/tsv into a temporary file and renames it when done.

Nothing grows with the length of the input: the audio held is at most one block plus one segment.

:func:`transcribe` runs the whole pipeline on one file or array and returns the segments;
:func:`transcribe_inputs` is the ``asr transcribe`` command (files, folders, stdin, output files).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import select
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from asr.errors import AsrError, AudioError, ConfigError
from asr.inference import pad_waves
from asr.io_utils import create_temporary
from asr.text import one_line

if TYPE_CHECKING:
    from asr.decoding import DecodeOptions
    from asr.inference import Recognizer

log = logging.getLogger(__name__)

FORMATS = ("txt", "json", "srt", "vtt", "tsv")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")
STDIN = "-"
FAILURES_NAME = "transcribe_failures.tsv"
_NO_SIGNAL_DB = -100.0  # energy of digital silence; log10 of the 1e-10 floor


@dataclass(frozen=True)
class VadConfig:
    """Energy voice-activity detection; times in seconds, levels in dB (full scale = 0 dB)."""

    frame_ms: float = 10.0
    threshold_db: float = 12.0  # speech is this far above the noise floor
    min_energy_db: float = -55.0  # and at least this loud, so dither in digital silence is never speech
    initial_floor_db: float = -50.0  # noise floor guess before any quiet frame was seen
    floor_rise_db_per_s: float = 3.0  # slow rise: speech must not lift the floor up to itself
    floor_fall: float = 0.5  # fraction of the gap closed per frame when a frame is quieter than the floor
    hangover: float = 0.1  # speech continues this long after the last loud frame
    min_silence: float = 0.3  # a shorter pause does not split a region (>= hangover + padding)
    min_speech: float = 0.1  # regions with less loud audio than this are clicks, not speech
    padding: float = 0.2  # audio decoded on each side of a region: models are trained on padded clips

    def __post_init__(self):
        if self.frame_ms <= 0 or self.min_silence <= 0:
            raise ValueError("frame_ms and min_silence must be positive")
        if min(self.hangover, self.min_speech, self.padding) < 0:
            raise ValueError("hangover, min_speech and padding must be non-negative")


@dataclass(frozen=True)
class TranscribeConfig:
    """Segmentation, batching and output settings of long-form transcription."""

    max_segment: float = 20.0  # seconds; longer speech is cut where CTC predicts blanks
    # Seconds the next piece of a cut region starts before the cut; None: min(1 s, max_segment / 4).
    overlap: float | None = None
    cut_search: float = 6.0  # seconds before max_segment searched for a blank run to cut at
    batch_size: int = 8  # segments decoded together
    block_seconds: float = 10.0  # audio read per block from a file
    stdin_block_seconds: float = 0.25  # small, so live input is segmented as it arrives
    stdin_rate: int = 16000  # sample rate of raw s16le PCM on stdin
    min_avg_logprob: float = -3.0  # a segment whose mean token log-prob is below this is dropped
    # A segment whose CTC best path is all blank is dropped unless the decoder is at least this sure of
    # its words (as Whisper pairs no_speech_prob with avg_logprob): young models' CTC heads lag behind.
    no_speech_logprob: float = -1.0
    word_timestamps: bool = True
    formats: str = "txt"  # comma-separated subset of FORMATS, or "all"
    output_dir: str = "."

    def __post_init__(self):
        if self.max_segment <= 2 * self.overlap_seconds or self.overlap_seconds < 0:
            raise ValueError("max_segment must exceed twice the overlap, and overlap be non-negative")
        if self.batch_size < 1 or self.block_seconds <= 0 or self.stdin_block_seconds <= 0:
            raise ValueError("batch_size, block_seconds and stdin_block_seconds must be positive")
        if self.stdin_rate < 1000:
            raise ValueError(f"stdin_rate {self.stdin_rate} Hz is too low")
        parse_formats(self.formats)


    @property
    def overlap_seconds(self) -> float:
        """The overlap in force: ``overlap``, or min(1 s, max_segment / 4) when it is None."""
        return min(1.0, self.max_segment / 4) if self.overlap is None else self.overlap


@dataclass
class Word:
    """A word with its times (seconds from the start of the input) and confidence in [0, 1]."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass
class Segment:
    """A stretch of recognised speech. Times are seconds from the start of the input.

    ``confidence`` is the geometric mean of its tokens' posteriors, each word's the minimum over its
    pieces (see :meth:`asr.inference.Recognizer.token_confidences`). ``alternatives``: with ``nbest`` > 1,
    the chunk's n-best list ``[{"text", "score", "avg_logprob"}]``, best first, before stitching.
    """

    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float  # mean log-probability per output token (end of sentence included)
    confidence: float = 0.0
    words: list[Word] = field(default_factory=list)
    guards: dict[str, int] = field(default_factory=dict)  # decoding guards that fired (loops, length)
    alternatives: list[dict] = field(default_factory=list)


def parse_formats(text: str) -> tuple[str, ...]:
    """``"srt,json"`` or ``"all"`` -> a tuple of known format names; ConfigError on an unknown one."""
    names = FORMATS if text.strip() == "all" else tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in FORMATS:
            raise ConfigError("--format", f"unknown format '{name}' (known: {', '.join(FORMATS)}, all)")
    if not names:
        raise ConfigError("--format", "no output format given")
    return names


# ---------------------------------------------------------------------------------------------
# Sources: float32 blocks at the model's rate.
# ---------------------------------------------------------------------------------------------


def iter_array_blocks(audio: np.ndarray, block_seconds: float, sample_rate: int) -> Iterator[np.ndarray]:
    """Yield views of ``audio`` (samples,) in blocks of ``block_seconds``."""
    size = max(1, int(round(block_seconds * sample_rate)))
    for i in range(0, len(audio), size):
        yield audio[i : i + size]


def _interruptible_reader(stream: IO[bytes]):
    """A ``read(n)`` for ``stream`` that lets Ctrl-C through while waiting for data.

    A signal may be delivered to another thread (torch's or soxr's workers); a blocking read in the main
    thread is then never interrupted, and Python runs the handler only once a byte arrives. Waiting in
    short ``select`` slices returns to the interpreter often enough for KeyboardInterrupt to be raised.
    """
    try:
        # Read the descriptor directly: nothing reads this stream through its buffer before us.
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return getattr(stream, "read1", stream.read)

    def read(n: int) -> bytes:
        while not select.select([fd], [], [], 0.1)[0]:
            pass
        return os.read(fd, n)

    return read


def iter_pcm_blocks(
    stream: IO[bytes], rate: int, sample_rate: int, block_seconds: float = 0.25
) -> Iterator[np.ndarray]:
    """Read raw signed 16-bit little-endian mono PCM from a binary stream as float32 blocks.

    Blocks are yielded as soon as ``block_seconds`` of audio has arrived, so a live pipe is processed
    while it records. Audio at another ``rate`` is resampled with a streaming filter (no clicks at
    block edges).

    Yields:
        block: (samples,) float32 at ``sample_rate``.
    """
    import soxr

    resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32") if rate != sample_rate else None
    want = max(2, int(round(block_seconds * rate)) * 2)
    read = _interruptible_reader(stream)
    buf = b""
    while True:
        data = read(want - len(buf))
        if data:
            buf += data
            if len(buf) < want:
                continue
        usable = len(buf) - len(buf) % 2
        block = np.frombuffer(buf[:usable], dtype="<i2").astype(np.float32) / 32768.0
        buf = buf[usable:]
        if resampler is not None:
            block = np.asarray(resampler.resample_chunk(block, last=not data), dtype=np.float32)
        if block.size:
            yield block
        if not data:
            return


# ---------------------------------------------------------------------------------------------
# Voice activity detection and segmentation.
# ---------------------------------------------------------------------------------------------


class EnergyVad:
    """Streaming energy VAD: feed blocks, get closed speech regions ``(start, end)`` in samples."""

    def __init__(self, cfg: VadConfig, sample_rate: int):
        self.cfg = cfg
        self.frame = max(1, int(round(sample_rate * cfg.frame_ms / 1000)))
        frame_s = self.frame / sample_rate
        self._hangover = int(round(cfg.hangover / frame_s))
        self._min_silence = max(1, int(round(cfg.min_silence / frame_s)))
        self._min_speech = int(round(cfg.min_speech / frame_s))
        self._rise = cfg.floor_rise_db_per_s * frame_s
        self._rest = np.zeros(0, dtype=np.float32)
        self._frames = 0
        self._floor: float | None = None
        self._start: int | None = None  # first loud frame of the open region
        self._last_loud = -1
        self._loud = 0  # loud frames in the open region

    @property
    def open_start(self) -> int | None:
        """Sample where the region still open began, or None."""
        return None if self._start is None else self._start * self.frame

    def push(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Consume ``samples`` (n,) float32; return regions closed by them, ``[(start, end)]`` in samples."""
        x = np.concatenate([self._rest, samples]) if self._rest.size else samples
        n = len(x) // self.frame
        self._rest = np.array(x[n * self.frame :], dtype=np.float32)
        frames = np.asarray(x[: n * self.frame], dtype=np.float32).reshape(n, self.frame)
        power = np.einsum("ij,ij->i", frames, frames) / self.frame
        energy = 10.0 * np.log10(power.astype(np.float64) + 1e-10)
        regions = []
        for e in energy.tolist():
            region = self._step(e)
            if region is not None:
                regions.append(region)
        return regions

    def finish(self) -> list[tuple[int, int]]:
        """Close the open region at the end of the stream."""
        region = self._close() if self._start is not None else None
        return [region] if region is not None else []

    def _step(self, energy_db: float) -> tuple[int, int] | None:
        i = self._frames
        self._frames += 1
        floor = self._update_floor(energy_db)
        if energy_db > max(floor + self.cfg.threshold_db, self.cfg.min_energy_db):
            if self._start is None:
                self._start, self._loud = i, 0
            self._last_loud = i
            self._loud += 1
            return None
        if self._start is not None and i - self._last_loud >= self._min_silence:
            return self._close()
        return None

    def _update_floor(self, energy_db: float) -> float:
        """Track the noise floor: fall fast towards quiet frames, rise only slowly (speech is loud)."""
        floor = self._floor
        if floor is None:
            floor = min(energy_db, self.cfg.initial_floor_db)
        if energy_db < floor:
            floor += self.cfg.floor_fall * (energy_db - floor)
        else:
            floor += min(energy_db - floor, self._rise)
        self._floor = max(floor, _NO_SIGNAL_DB)
        return floor

    def _close(self) -> tuple[int, int] | None:
        start, loud = self._start, self._loud
        self._start = None
        if loud < max(1, self._min_speech):
            return None
        end = min(self._last_loud + 1 + self._hangover, self._frames)
        return start * self.frame, end * self.frame


@dataclass
class Chunk:
    """A piece of audio to decode: ``samples`` (n,) float32 starting at sample ``start`` of the stream.

    ``speech`` is the stretch ``(start, end)`` in stream samples that the chunk stands for: the VAD
    region without its padding, or the piece between two forced cuts.
    """

    start: int
    samples: np.ndarray
    speech: tuple[int, int]
    overlaps_previous: bool = False  # it starts inside the previous chunk (a forced cut)


CutFinder = Callable[[np.ndarray, int, int], int]


def energy_cut(window: np.ndarray, lo: int, hi: int, frame: int = 160) -> int:
    """Fallback cut finder: the quietest 10 ms frame in ``window[lo:hi]``; returns a sample index."""
    n = (hi - lo) // frame
    if n < 1:
        return hi
    frames = window[lo : lo + n * frame].astype(np.float64).reshape(n, frame)
    return lo + int(np.argmin((frames * frames).sum(axis=1))) * frame + frame // 2


def blank_cut(recognizer: Recognizer, window: np.ndarray, lo: int, hi: int) -> int:
    """Where to cut ``window`` (samples,): inside the longest CTC blank run within ``[lo, hi]``.

    Ties go to the later run, keeping pieces long. Within the run the cut goes to the quietest
    10 ms: a confident CTC head's runs are the pauses between words, and a young one that predicts
    blank almost everywhere then still cuts in a pause rather than in the middle of the run.
    Without a CTC head, or without any blank frame in the range, the quietest frame is used.
    """
    from asr.align import longest_run
    from asr.tokenizer import BLANK_ID

    if not recognizer.has_ctc:
        return energy_cut(window, lo, hi)
    waves = np.ascontiguousarray(window, dtype=np.float32)[None]
    _, enc_lengths, ctc = recognizer.encode_with_ctc(waves, np.array([len(window)]))
    n = int(enc_lengths[0])
    blank = ctc[0, :n].argmax(-1) == BLANK_ID
    per_frame = len(window) / max(n, 1)
    run = longest_run(blank, int(np.ceil(lo / per_frame)), int(hi / per_frame))
    if run is None:
        return energy_cut(window, lo, hi)
    return energy_cut(window, int(run[0] * per_frame), int(run[1] * per_frame))


class Segmenter:
    """Turn a stream of blocks into chunks of speech no longer than ``max_segment`` seconds.

    Holds the audio of the open region only (plus ``padding`` before it), never the whole stream.
    ``find_cut(window, lo, hi)`` picks where to cut a region that is too long, as a sample index in
    ``[lo, hi]`` of ``window``.
    """

    def __init__(self, vad: VadConfig, cfg: TranscribeConfig, sample_rate: int, find_cut: CutFinder = energy_cut):
        self.vad = EnergyVad(vad, sample_rate)
        self.find_cut = find_cut
        self._pad = int(round(vad.padding * sample_rate))
        self._max = int(round(cfg.max_segment * sample_rate))
        self._overlap = int(round(cfg.overlap_seconds * sample_rate))
        search = min(cfg.cut_search, cfg.max_segment - 2 * cfg.overlap_seconds)
        self._search_lo = self._max - int(round(search * sample_rate))
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream sample of _buf[0]
        self._cur: int | None = None  # stream sample where the next chunk of the open region starts
        self._speech_start = 0  # stream sample where the open region's speech (or the last cut) is
        self._continued = False
        self._last_end = 0

    @property
    def position(self) -> int:
        """Samples consumed so far."""
        return self._buf_start + len(self._buf)

    def push(self, block: np.ndarray) -> list[Chunk]:
        """Consume a block (n,) float32; return the chunks it completed."""
        self._buf = np.concatenate([self._buf, block]) if self._buf.size else np.array(block, dtype=np.float32)
        out = []
        for start, end in self.vad.push(block):
            out += self._close_region(start, end)
        if self.vad.open_start is not None:
            self._open_region(self.vad.open_start)
            while self.position - self._cur >= self._max:
                out.append(self._forced_cut())
        self._trim()
        return out

    def finish(self) -> list[Chunk]:
        """End of stream: return the chunks of the region still open."""
        out = []
        for start, end in self.vad.finish():
            out += self._close_region(start, end)
        return out

    def _open_region(self, start: int) -> None:
        if self._cur is None:
            self._cur = max(start - self._pad, self._last_end, self._buf_start)
            self._speech_start = max(start, self._cur)
            self._continued = False

    def _close_region(self, start: int, end: int) -> list[Chunk]:
        self._open_region(start)
        stop = min(end + self._pad, self.position)
        out = []
        while stop - self._cur > self._max:
            out.append(self._forced_cut())
        out.append(self._chunk(self._cur, stop, min(end, stop)))
        self._last_end, self._cur = stop, None
        return out

    def _forced_cut(self) -> Chunk:
        """Cut the open region at a blank run shortly before ``max_segment``; keep ``overlap`` of context."""
        window = self._slice(self._cur, self._cur + self._max)
        cut = int(np.clip(self.find_cut(window, self._search_lo, self._max), self._search_lo, self._max))
        chunk = self._chunk(self._cur, self._cur + cut, self._cur + cut)
        self._speech_start = self._cur + cut
        self._cur += cut - self._overlap
        self._continued = True
        return chunk

    def _chunk(self, start: int, stop: int, speech_end: int) -> Chunk:
        speech = (self._speech_start, max(self._speech_start, speech_end))
        return Chunk(start, self._slice(start, stop).copy(), speech, self._continued)

    def _slice(self, start: int, stop: int) -> np.ndarray:
        return self._buf[start - self._buf_start : stop - self._buf_start]

    def _trim(self) -> None:
        keep_from = self._cur if self._cur is not None else self.position - self._pad
        if self.vad.open_start is not None:
            keep_from = min(keep_from, self.vad.open_start - self._pad)
        drop = max(0, keep_from - self._buf_start)
        if drop:
            self._buf = self._buf[drop:].copy()
            self._buf_start += drop


# ---------------------------------------------------------------------------------------------
# Decoding and stitching.
# ---------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """A decoded chunk before stitching: times in seconds from the stream start; ``start``/``end``
    bound the speech the chunk stands for (its audio has padding or overlap around it)."""

    start: float
    end: float
    overlaps_previous: bool
    tokens: list[int]
    words: list[tuple[str, float, float, list[int], np.ndarray]]  # word, start, end, its tokens, their probs
    avg_logprob: float
    guards: dict[str, int]
    keep: bool  # False: empty CTC output or too low a score (silence, noise)
    token_probs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (len(tokens) + 1,), EOS last
    alternatives: list[dict] = field(default_factory=list)


def decode_chunks(
    recognizer: Recognizer, chunks: list[Chunk], options: DecodeOptions, cfg: TranscribeConfig,
    lm=None, context=None,
) -> list[Decoded]:
    """Decode chunks together (with an optional fusion ``lm`` and hotword ``context``); align each
    output to the CTC posteriors for word times, and score its tokens for confidence."""
    from asr.align import ctc_greedy, word_alignment

    sr = recognizer.sample_rate
    waves, lengths = pad_waves([c.samples for c in chunks])
    with recognizer.precision(options):
        enc, enc_lengths, ctc = recognizer.encode_with_ctc(waves, lengths)
        nbests = recognizer.decode(enc, enc_lengths, options, lm, context)
        hyps = [nbest[0] for nbest in nbests]
        probs = recognizer.token_confidences(enc, enc_lengths, [h.tokens for h in hyps], ctc)
    # Without a CTC head there is no blank evidence and no alignment: trust the decoder alone.
    ctc_empty = [not path for path in ctc_greedy(ctc, enc_lengths)] if ctc is not None else [False] * len(chunks)
    out = []
    for i, (chunk, hyp) in enumerate(zip(chunks, hyps)):
        log_probs = ctc[i, : int(enc_lengths[i])] if ctc is not None else None
        start, (speech_start, speech_end) = chunk.start / sr, chunk.speech
        # A pure-CTC model has no decoder log-prob; its CTC path score stands in.
        total = hyp.log_prob if recognizer.has_speller else hyp.ctc_score
        avg = float(total) / (len(hyp.tokens) + 1)
        keep = is_speech(hyp.tokens, avg, ctc_empty[i], cfg)
        words = []
        if keep and cfg.word_timestamps and log_probs is not None:
            timed = word_alignment(log_probs, hyp.tokens, recognizer.tokenizer, recognizer.frame_seconds, start)
            words = _with_token_probs(timed, hyp.tokens, probs[i])
        alternatives = [] if options.nbest == 1 else [
            {"text": recognizer.tokenizer.decode(h.tokens).strip(), "score": round(h.score, 4),
             "avg_logprob": round((h.log_prob if recognizer.backend.has_speller else h.ctc_score)
                                  / (len(h.tokens) + 1), 4)} for h in nbests[i]]
        out.append(Decoded(speech_start / sr, speech_end / sr, chunk.overlaps_previous, list(hyp.tokens),
                           words, avg, dict(hyp.guards), keep, probs[i], alternatives))
    return out


def _with_token_probs(words, tokens: list[int], probs: np.ndarray) -> list:
    """Attach to each aligned word ``(word, start, end, ids)`` the probabilities of its tokens.

    Words cover the tokens in order (a piece that decodes to nothing may be skipped), so each word's
    ids are found at or after the end of the previous word's.
    """
    out, pos = [], 0
    for word, a, b, ids in words:
        n = len(ids)
        while pos + n <= len(tokens) and tokens[pos : pos + n] != ids:
            pos += 1
        out.append((word, a, b, ids, probs[pos : pos + n]))
        pos += n
    return out


def is_speech(tokens: list[int], avg_logprob: float, ctc_empty: bool, cfg: TranscribeConfig) -> bool:
    """Keep a decoded segment? Not when it is empty, very unlikely, or CTC hears nothing and the
    decoder is unsure: that is how noise that passed the VAD shows."""
    if not tokens or avg_logprob < cfg.min_avg_logprob:
        return False
    return not ctc_empty or avg_logprob >= cfg.no_speech_logprob


@dataclass
class StitchState:
    """What stitching remembers of the previous chunk: where it ended and its last words."""

    end: float | None = None
    tail: list[str] = field(default_factory=list)


def stitch(decoded: Decoded, state: StitchState, tokenizer) -> Segment | None:
    """Turn a decoded chunk into a Segment, dropping words the previous (overlapping) chunk covered.

    A word belongs to the previous chunk when its centre lies before that chunk's end (the cut): the
    previous chunk decoded it with its left context. Without word times, a repeated run of words at the
    seam is dropped instead. Updates ``state`` for the next chunk.
    """
    from asr.align import segment_confidence, word_confidence

    prev_end, prev_tail = state.end, state.tail
    state.end, state.tail = decoded.end, []
    if not decoded.keep:
        return None
    start, words, tokens = decoded.start, decoded.words, decoded.tokens
    token_probs = decoded.token_probs
    text = tokenizer.decode(tokens).strip()
    if decoded.overlaps_previous and prev_end is not None:
        start = max(start, prev_end)
        if words:
            kept = [w for w in words if (w[1] + w[2]) / 2 >= prev_end]
            if len(kept) < len(words):
                words, tokens = kept, [t for w in kept for t in w[3]]
                token_probs = np.concatenate([w[4] for w in kept]) if kept else np.zeros(0)
                text = tokenizer.decode(tokens).strip()
        else:
            n = _repeated_prefix(prev_tail, text.split())
            if n:
                text = " ".join(text.split()[n:])
                tokens = tokenizer.encode(text) if text else []
    state.tail = text.split()[-8:]
    if not text:
        return None
    return Segment(
        start=round(start, 3),
        end=round(decoded.end, 3),
        text=text,
        tokens=tokens,
        avg_logprob=round(decoded.avg_logprob, 4),
        confidence=round(segment_confidence(token_probs), 4),
        # Padding lets a word's alignment spill just outside the speech; keep it inside the segment.
        words=[Word(w, round(min(max(a, start), decoded.end), 3), round(min(max(b, start), decoded.end), 3),
                    round(word_confidence(p), 4)) for w, a, b, _, p in words],
        guards=decoded.guards,
        alternatives=decoded.alternatives,
    )


def _repeated_prefix(tail: list[str], words: list[str]) -> int:
    """Length of the longest prefix of ``words`` that repeats the end of ``tail``."""
    for n in range(min(len(tail), len(words)), 0, -1):
        if tail[-n:] == words[:n]:
            return n
    return 0


def iter_segments(
    recognizer: Recognizer,
    blocks: Iterable[np.ndarray],
    options: DecodeOptions,
    cfg: TranscribeConfig = TranscribeConfig(),
    vad: VadConfig = VadConfig(),
    progress: Callable[[int], None] | None = None,
    live: bool = False,
    lm=None,
    context=None,
) -> Iterator[Segment]:
    """Transcribe a stream of blocks (n,) float32 at the model's rate, yielding segments as they finish.

    Chunks are decoded ``cfg.batch_size`` at a time. ``live`` input (a pipe that delivers audio as it is
    recorded) decodes whatever is pending after every block instead, so text appears as soon as a pause
    closes a segment. ``progress(samples)`` is called after every block. ``lm``: an LM for shallow
    fusion (``Recognizer.load_lm``); ``context``: an :class:`asr.context.ContextGraph` of hotwords.
    """
    search = functools.partial(_decode_and_stitch, lm=lm, context=context)
    segmenter = Segmenter(vad, cfg, recognizer.sample_rate, functools.partial(blank_cut, recognizer))
    state = StitchState()
    pending: list[Chunk] = []
    for block in blocks:
        pending += segmenter.push(block)
        if progress is not None:
            progress(segmenter.position)
        while len(pending) >= cfg.batch_size or (live and pending):
            yield from search(recognizer, pending[: cfg.batch_size], options, cfg, state)
            pending = pending[cfg.batch_size :]
    pending += segmenter.finish()
    for i in range(0, len(pending), cfg.batch_size):
        yield from search(recognizer, pending[i : i + cfg.batch_size], options, cfg, state)


def _decode_and_stitch(recognizer, chunks, options, cfg, state: StitchState, lm=None,
                       context=None) -> Iterator[Segment]:
    for decoded in decode_chunks(recognizer, chunks, options, cfg, lm, context):
        segment = stitch(decoded, state, recognizer.tokenizer)
        if segment is not None:
            yield segment


def transcribe(
    recognizer: Recognizer,
    audio: str | Path | np.ndarray,
    options: DecodeOptions | None = None,
    config: TranscribeConfig | None = None,
    vad: VadConfig | None = None,
    sample_rate: int | None = None,
    lm=None,
    context=None,
) -> list[Segment]:
    """Transcribe a file (read in blocks, any length) or an array at ``sample_rate`` (default the model's).

    ``audio``: a path, or samples as (samples,) or (samples, channels) float32 (channels are averaged).
    ``lm``/``context``: LM fusion and hotwords, as in :func:`iter_segments`.
    Returns the segments in time order; silence gives an empty list.
    """
    from asr.decoding import DecodeOptions

    config = config or TranscribeConfig()
    if isinstance(audio, (str, Path)):
        from asr.audio import iter_blocks

        blocks = iter_blocks(audio, config.block_seconds, recognizer.sample_rate)
    else:
        mono = _as_mono(audio, sample_rate or recognizer.sample_rate, recognizer.sample_rate)
        blocks = iter_array_blocks(mono, config.block_seconds, recognizer.sample_rate)
    return list(iter_segments(recognizer, blocks, options or DecodeOptions(), config, vad or VadConfig(),
                              lm=lm, context=context))


def _as_mono(audio: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """(samples,) float32 at ``sample_rate`` from (samples,) or (samples, channels) at ``rate``."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:  # (samples, channels), as soundfile returns it
        audio = audio.mean(axis=1)
    if audio.ndim != 1:
        raise ValueError(f"expected audio (samples,) or (samples, channels), got shape {audio.shape}")
    if rate != sample_rate:
        from asr.audio import resample

        audio = resample(audio, rate, sample_rate)
    return audio


# ---------------------------------------------------------------------------------------------
# Writers.
# ---------------------------------------------------------------------------------------------


def format_timestamp(seconds: float, decimal: str = ",") -> str:
    """``3723.5`` -> ``"01:02:03,500"`` (SRT); ``decimal="."`` for WebVTT."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def format_console_time(seconds: float) -> str:
    """``62.5`` -> ``"01:02.500"``; hours are shown only when there are any (``"1:02:03.500"``)."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return (f"{h}:" if h else "") + f"{m:02d}:{s:02d}.{ms:03d}"


def format_console(seg: Segment) -> str:
    """The line printed as a segment is decoded: ``[00:00.000 --> 00:02.340] TEXT``."""
    return f"[{format_console_time(seg.start)} --> {format_console_time(seg.end)}] {one_line(seg.text)}"


def format_header(fmt: str) -> str:
    return {"vtt": "WEBVTT\n\n", "tsv": "start\tend\ttext\tconfidence\n", "json": '{"segments": [\n'}.get(fmt, "")


def format_segment(fmt: str, index: int, seg: Segment) -> str:
    """One segment in ``fmt``; ``index`` counts from 1."""
    text = one_line(seg.text)
    if fmt == "txt":
        return text + "\n"
    if fmt == "srt":
        return f"{index}\n{format_timestamp(seg.start)} --> {format_timestamp(seg.end)}\n{text}\n\n"
    if fmt == "vtt":
        return f"{index}\n{format_timestamp(seg.start, '.')} --> {format_timestamp(seg.end, '.')}\n{text}\n\n"
    if fmt == "tsv":
        return f"{int(round(seg.start * 1000))}\t{int(round(seg.end * 1000))}\t{text}\t{seg.confidence:.4f}\n"
    if fmt == "json":
        item = json.dumps(dataclasses.asdict(seg), ensure_ascii=False)
        return ("" if index == 1 else ",\n") + item
    raise ValueError(f"unknown format {fmt}")


def format_footer(fmt: str, summary: dict) -> str:
    if fmt == "json":
        return "\n],\n" + '"summary": ' + json.dumps(summary, ensure_ascii=False) + "}\n"
    return ""


class SegmentWriter:
    """Stream segments in one format into a hidden temporary file; ``close`` renames it into place.

    A run killed before ``close`` leaves only the hidden temporary file, never a complete-looking one.
    """

    def __init__(self, path: str | Path, fmt: str):
        self.path, self.fmt, self.count = Path(path), fmt, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = create_temporary(self.path)  # the umask's mode, not mkstemp's 0600
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        self._file.write(format_header(fmt))

    def write(self, seg: Segment) -> None:
        self.count += 1
        self._file.write(format_segment(self.fmt, self.count, seg))

    def close(self, summary: dict) -> None:
        self._file.write(format_footer(self.fmt, summary))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Files and folders.
# ---------------------------------------------------------------------------------------------


@dataclass
class FileResult:
    """What one input produced."""

    source: str
    segments: int
    audio_seconds: float
    elapsed: float
    complete: bool

    def summary(self) -> dict:
        rtf = self.elapsed / self.audio_seconds if self.audio_seconds > 0 else 0.0
        return {"audio": self.source, "segments": self.segments, "duration": round(self.audio_seconds, 3),
                "elapsed": round(self.elapsed, 3), "rtf": round(rtf, 4), "complete": self.complete}


@dataclass
class BatchResult:
    """Outcome of a batch run: per-input results and ``(input, reason)`` failures."""

    results: list[FileResult]
    failures: list[tuple[str, str]]


def transcribe_stream(
    recognizer: Recognizer,
    blocks: Iterable[np.ndarray],
    source: str,
    writers: list[SegmentWriter],
    options: DecodeOptions,
    cfg: TranscribeConfig,
    vad: VadConfig,
    echo: IO[str] | None = None,
    live: bool = False,
    lm=None,
    context=None,
) -> FileResult:
    """Transcribe one stream into ``writers`` (and print each segment to ``echo``, flushed, as
    ``[start --> end] TEXT``).

    On Ctrl-C the writers are closed with what is finished (summary ``complete: false``) and the
    KeyboardInterrupt propagates; on any other error they are discarded.
    """
    t0, seen, count = time.perf_counter(), [0], 0

    def progress(samples: int) -> None:
        seen[0] = samples

    def result(complete: bool) -> FileResult:
        return FileResult(source, count, seen[0] / recognizer.sample_rate, time.perf_counter() - t0, complete)

    try:
        for seg in iter_segments(recognizer, blocks, options, cfg, vad, progress, live, lm, context):
            count += 1
            for w in writers:
                w.write(seg)
            if echo is not None:
                _echo(format_console(seg), echo)
    except KeyboardInterrupt:
        for w in writers:
            w.close(result(False).summary())
        raise
    except BaseException:
        for w in writers:
            w.abort()
        raise
    res = result(True)
    for w in writers:
        w.close(res.summary())
    return res


def _echo(line: str, stream: IO[str]) -> None:
    """Print a line without tearing a progress bar that tqdm draws on the terminal's stderr."""
    tqdm = _tqdm()
    if tqdm is not None and sys.stderr.isatty():
        with tqdm.external_write_mode(file=sys.stderr):
            print(line, file=stream, flush=True)
    else:
        print(line, file=stream, flush=True)


def expand_inputs(inputs: list[str]) -> list[tuple[str, Path | None]]:
    """Inputs -> ``[(path, root)]``: files as given (root None), folders searched recursively for audio.

    Missing paths are passed through so that they are reported, counted and skipped like bad files.
    """
    out = []
    for item in inputs:
        path = Path(item)
        if item != STDIN and path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
            out += [(str(p), path) for p in found]
            if not found:
                out.append((item, None))
        else:
            out.append((item, None))
    return out


def output_stem(source: str, root: Path | None, output_dir: Path, taken: set[Path]) -> Path:
    """Where the outputs of ``source`` go (without suffix): the folder layout under ``root`` is kept."""
    rel = Path("stdin") if source == STDIN else Path(source).relative_to(root) if root else Path(Path(source).name)
    stem = output_dir / rel.with_suffix("")
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = stem.with_name(f"{stem.name}-{n}")
    taken.add(candidate)
    return candidate


def transcribe_inputs(
    recognizer: Recognizer,
    inputs: list[str],
    options: DecodeOptions,
    cfg: TranscribeConfig = TranscribeConfig(),
    vad: VadConfig = VadConfig(),
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
    write_stdin_files: bool = False,
    quiet: bool = False,
    lm=None,
    context=None,
) -> BatchResult:
    """Transcribe files, folders and ``-`` (raw s16le PCM on ``stdin``) into ``cfg.output_dir``.

    A bad input is reported on stderr in one line, counted and skipped; the failures are also written
    to ``<output_dir>/transcribe_failures.tsv``. Each segment is printed to ``stdout`` as it is
    recognised (not when ``quiet``), under a ``==> INPUT <==`` header when there are several inputs.
    Files from stdin are written only when ``write_stdin_files``. ``lm``/``context``: LM fusion and
    hotwords (see :func:`iter_segments`). Several inputs get a files bar on a terminal's stderr (when
    tqdm is installed: a minimal install for exported models leaves it out).
    """
    tqdm = _tqdm() or _NoBar

    formats, output_dir = parse_formats(cfg.formats), Path(cfg.output_dir)
    stdout = stdout if stdout is not None else sys.stdout
    echo = None if quiet else stdout
    results, failures, taken = [], [], set()
    items = expand_inputs(inputs)
    bar = tqdm(total=len(items), unit="file", desc="files", disable=len(items) < 2 or not sys.stderr.isatty())
    for source, root in items:
        stem = output_stem(source, root, output_dir, taken)
        if echo is not None and len(items) > 1:
            _echo(f"==> {source} <==", echo)
        try:
            results.append(_transcribe_one(recognizer, source, root, stem, formats, options, cfg, vad,
                                           stdin, echo, write_stdin_files, lm, context))
        except AsrError as e:
            failures.append((source, e.reason))
            with tqdm.external_write_mode(file=sys.stderr):
                print(f"asr: error: {e}", file=sys.stderr, flush=True)
        bar.update(1)
    bar.close()
    if failures:
        lines = "".join(f"{one_line(s)}\t{one_line(r)}\n" for s, r in failures)
        from asr.io_utils import atomic_write_text

        atomic_write_text(output_dir / FAILURES_NAME, "input\treason\n" + lines)
    return BatchResult(results, failures)


def _transcribe_one(recognizer, source, root, stem, formats, options, cfg, vad, stdin, echo, write_stdin_files,
                    lm=None, context=None):
    sr = recognizer.sample_rate
    if source == STDIN:
        stream = stdin if stdin is not None else sys.stdin.buffer
        blocks = iter_pcm_blocks(stream, cfg.stdin_rate, sr, cfg.stdin_block_seconds)
        wanted = write_stdin_files
    else:
        from asr.audio import iter_blocks

        if root is None and Path(source).is_dir():
            raise AudioError(source, "folder holds no audio files")
        blocks = iter_blocks(source, cfg.block_seconds, sr)
        wanted = True
    blocks = _prime(blocks)  # open the file before creating outputs, so a bad file leaves none
    if source != STDIN:
        blocks = _with_progress(blocks, source, sr)
    writers = [SegmentWriter(stem.with_name(f"{stem.name}.{fmt}"), fmt) for fmt in formats] if wanted else []
    res = transcribe_stream(recognizer, blocks, source, writers, options, cfg, vad, echo, source == STDIN, lm,
                            context)
    log.info("%s: %d segments, %.1f s of audio, RTF %.3f", source, res.segments, res.audio_seconds,
             res.summary()["rtf"])
    return res


def _tqdm():
    """tqdm's bar class, or None where tqdm is not installed (a minimal install for exported models
    leaves it out: transcription then shows no bars)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class _NoBar:
    """Stands in for tqdm where it is not installed: takes its calls, shows nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


PROGRESS_MIN_SECONDS = 60.0  # shorter files finish before a bar would tell anything


def _with_progress(blocks: Iterator[np.ndarray], source: str, sample_rate: int) -> Iterator[np.ndarray]:
    """Show a tqdm bar of audio seconds read, for long files on a terminal only (so logs stay clean; not
    without tqdm, which a minimal install for exported models leaves out)."""
    tqdm = _tqdm()
    if tqdm is None:
        yield from blocks
        return

    from asr.audio import audio_duration

    total = round(audio_duration(source), 1)
    with tqdm(total=total, unit="s", desc=Path(source).name, leave=False,
              disable=not sys.stderr.isatty() or total < PROGRESS_MIN_SECONDS,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]") as bar:
        for block in blocks:
            yield block
            bar.update(min(len(block) / sample_rate, total - bar.n))


def _prime(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Read the first block now, so a file that cannot be opened fails before anything is written."""
    blocks = iter(blocks)
    try:
        first = next(blocks)
    except StopIteration:
        return iter(())

    def chain() -> Iterator[np.ndarray]:
        yield first
        yield from blocks

    return chain()
