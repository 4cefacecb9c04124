"""Streaming sessions, message parsing and admission: the server's logic, free of any network code.

A :class:`StreamSession` is the long-file transcriber of :mod:`asr.transcribe` driven by a socket instead
of a file: PCM frames -> :class:`PcmDecoder` -> :class:`~asr.transcribe.Segmenter` -> decode -> stitch.
It holds at most one segment of audio (plus the padding before it), so an hour-long stream has the
memory of a ten-second one. Its methods block (they run the model) and are called from the server's
decoding pool, one call at a time per session.

Everything a client sends is checked here; a message the protocol does not allow raises
:class:`ProtocolError`, whose text goes back to the client as ``{"type": "error", "message": ...}``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from asr.transcribe import (
    Segmenter,
    StitchState,
    TranscribeConfig,
    VadConfig,
    blank_cut,
    decode_chunks,
    stitch,
)

if TYPE_CHECKING:
    from asr.decoding import DecodeOptions
    from asr.inference import Recognizer
    from asr.transcribe import Segment

# Sample formats of binary frames: numpy dtype and the scale to [-1, 1).
SAMPLE_FORMATS = {"s16le": ("<i2", 32768.0), "f32le": ("<f4", 1.0)}
MIN_RATE, MAX_RATE = 8000, 192000  # sample rates a stream may declare, in Hz
MAX_BEAM = 64
MIN_PARTIAL_SECONDS = 0.3  # shorter open speech gives no partial: too little to say anything
START_OPTIONS = ("beam", "partials")


@dataclass(frozen=True)
class ServeConfig:
    """Server settings: address, limits and decoding defaults. Sizes in bytes, times in seconds."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_sessions: int = 32  # streams and uploads at once; one more gets 503
    workers: int = 2  # decoding threads; the model is shared
    threads: int = 1  # torch intra-op threads per decoding thread
    beam: int = 1  # beam size when a request names none (1 = greedy: real time on small CPUs)
    max_upload_bytes: int = 64 << 20
    max_stream_seconds: float = 4 * 3600.0  # audio one stream may send
    idle_timeout: float = 30.0  # a stream that sends nothing for this long is closed
    max_frame_bytes: int = 1 << 20  # largest binary frame (about 33 s of 16 kHz s16le)
    partial_interval: float = 0.5  # seconds of audio between partial results
    send_timeout: float = 10.0  # a client that reads nothing for this long is dropped

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0: any free port), got {self.port}")
        if self.max_sessions < 1 or self.workers < 1 or self.threads < 1:
            raise ValueError("max_sessions, workers and threads must be >= 1")
        if not 1 <= self.beam <= MAX_BEAM:
            raise ValueError(f"beam must be in 1..{MAX_BEAM}")
        if min(self.max_upload_bytes, self.max_frame_bytes) < 1:
            raise ValueError("max_upload_bytes and max_frame_bytes must be >= 1")
        if min(self.max_stream_seconds, self.idle_timeout, self.partial_interval, self.send_timeout) <= 0:
            raise ValueError("max_stream_seconds, idle_timeout, partial_interval and send_timeout must be > 0")


def decode_options(beam: int, nbest: int = 1) -> DecodeOptions:
    """The search of a request: beam 1 is greedy search (no CTC prefix score), else beam search with
    the ``DecodeOptions`` defaults, keeping ``nbest`` (<= beam) hypotheses per segment."""
    from asr.decoding import DecodeOptions

    if beam == 1:
        return DecodeOptions(beam_size=1, ctc_weight=0.0)
    return DecodeOptions(beam_size=beam, nbest=nbest)


class ProtocolError(Exception):
    """A client message that the protocol does not allow; ``str(e)`` is the reason sent back."""


# ---------------------------------------------------------------------------------------------
# Messages.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartMessage:
    """A stream's ``{"type": "start", ...}``: how its binary frames are encoded and how to decode."""

    sample_rate: int
    format: str
    beam: int
    partials: bool


def parse_json(text: str) -> dict:
    """A text frame as a JSON object with a string ``type``; ProtocolError otherwise."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError(f"malformed JSON ({_short(e)})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError('a message needs a string "type"')
    return msg


def parse_start(msg: dict, default_beam: int) -> StartMessage:
    """Check a start message: ``sample_rate`` (int Hz), ``format`` (s16le|f32le), ``options`` (dict)."""
    if msg["type"] != "start":
        raise ProtocolError(f'expected {{"type": "start"}} first, got type "{_clip(msg["type"])}"')
    unknown = sorted(set(msg) - {"type", "sample_rate", "format", "options"})
    if unknown:
        raise ProtocolError(f"unknown start field(s): {', '.join(map(_clip, unknown))}")
    rate = msg.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(f"sample_rate must be an integer in {MIN_RATE}..{MAX_RATE} Hz, got {_clip(rate)}")
    fmt = msg.get("format", "s16le")
    if fmt not in SAMPLE_FORMATS:
        raise ProtocolError(f"format must be one of {', '.join(SAMPLE_FORMATS)}, got {_clip(fmt)}")
    options = msg.get("options", {})
    if not isinstance(options, dict):
        raise ProtocolError("options must be a JSON object")
    unknown = sorted(set(options) - set(START_OPTIONS))
    if unknown:
        raise ProtocolError(f"unknown option(s): {', '.join(map(_clip, unknown))} (known: {', '.join(START_OPTIONS)})")
    beam = options.get("beam", default_beam)
    if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= MAX_BEAM:
        raise ProtocolError(f"options.beam must be an integer in 1..{MAX_BEAM}, got {_clip(beam)}")
    partials = options.get("partials", True)
    if not isinstance(partials, bool):
        raise ProtocolError(f"options.partials must be true or false, got {_clip(partials)}")
    return StartMessage(rate, fmt, beam, partials)


def parse_query(params: dict[str, str], default_beam: int) -> tuple[str, int, int]:
    """``POST /v1/transcribe`` query -> (format, beam, nbest); ProtocolError names the bad parameter."""
    unknown = sorted(set(params) - {"format", "beam", "nbest"})
    if unknown:
        raise ProtocolError(f"unknown query parameter(s): {', '.join(map(_clip, unknown))} (known: format, beam, nbest)")
    fmt = params.get("format", "json")
    if fmt not in UPLOAD_FORMATS:
        raise ProtocolError(f"format must be one of {', '.join(UPLOAD_FORMATS)}, got {_clip(fmt)}")
    beam = _int_param(params, "beam", default_beam, 1, MAX_BEAM)
    nbest = _int_param(params, "nbest", 1, 1, beam)
    return fmt, beam, nbest


UPLOAD_FORMATS = ("json", "txt", "srt", "vtt")


def _int_param(params: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ProtocolError(f"{name} must be an integer, got {_clip(text)}") from None
    if not lo <= value <= hi:
        raise ProtocolError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def _clip(value: Any, n: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


def segment_json(index: int, seg: Segment) -> dict:
    """A Segment as the protocol's JSON: times in seconds, words as objects with their confidence."""
    return {"segment": index, "start": seg.start, "end": seg.end, "text": seg.text,
            "confidence": seg.confidence,
            **({"alternatives": seg.alternatives} if seg.alternatives else {}),
            "words": [{"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence}
                      for w in seg.words]}


# ---------------------------------------------------------------------------------------------
# Audio in.
# ---------------------------------------------------------------------------------------------


class PcmDecoder:
    """Binary frames -> float32 at the model's rate.

    A frame need not hold whole samples: the bytes of a split sample are kept for the next frame, as a
    byte stream would be. Another rate is resampled with soxr's streaming filter (no clicks at frame
    edges), so a stream cut into frames anywhere gives the same audio.
    """

    def __init__(self, fmt: str, rate: int, model_rate: int):
        import soxr

        self.dtype, self.scale = SAMPLE_FORMATS[fmt]
        self.width = np.dtype(self.dtype).itemsize
        self.rate = rate
        self._carry = b""
        self._resampler = soxr.ResampleStream(rate, model_rate, 1, dtype="float32") if rate != model_rate else None
        self.samples_in = 0  # samples received at ``rate``

    def seconds_after(self, nbytes: int) -> float:
        """Input seconds received once ``nbytes`` more bytes have arrived."""
        return (self.samples_in + (len(self._carry) + nbytes) // self.width) / self.rate

    def decode(self, data: bytes, last: bool = False) -> np.ndarray:
        """Bytes -> (samples,) float32 at the model rate; ``last`` flushes the resampler."""
        data = self._carry + data
        usable = len(data) - len(data) % self.width
        self._carry = data[usable:]
        x = np.frombuffer(data[:usable], dtype=self.dtype).astype(np.float32)
        self.samples_in += len(x)
        if self.scale != 1.0:
            x /= self.scale
        else:
            # f32le frames may hold anything: NaN and Inf would poison the VAD and the model.
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
            np.clip(x, -1.0, 1.0, out=x)
        if self._resampler is not None:
            x = np.asarray(self._resampler.resample_chunk(x, last=last), dtype=np.float32)
        return x

    @property
    def dangling_bytes(self) -> int:
        return len(self._carry)


class RecentAudio:
    """The last ``capacity`` samples of a stream, addressed by stream sample index."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.buf = np.zeros(0, dtype=np.float32)
        self.start = 0  # stream sample of buf[0]

    def append(self, x: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, x]) if self.buf.size else np.array(x, dtype=np.float32)
        drop = len(self.buf) - self.capacity
        if drop > 0:
            self.buf = self.buf[drop:].copy()
            self.start += drop

    def since(self, sample: int) -> np.ndarray:
        return self.buf[max(0, sample - self.start) :]


# ---------------------------------------------------------------------------------------------
# Sessions.
# ---------------------------------------------------------------------------------------------


class StreamSession:
    """One live stream: feed it bytes, get protocol messages back (finals; partials on request).

    Not thread-safe: the server calls one method at a time per session (in its decoding pool).
    """

    def __init__(self, recognizer: Recognizer, start: StartMessage, options: DecodeOptions,
                 partial_interval: float = 0.5, transcribe: TranscribeConfig | None = None,
                 vad: VadConfig | None = None):
        self.recognizer = recognizer
        self.start = start
        self.options = options
        # Live input: a segment is decoded as soon as a pause closes it, not when a batch fills.
        self.cfg = transcribe or TranscribeConfig(batch_size=1)
        vad = vad or VadConfig()
        sr = recognizer.sample_rate
        self.pcm = PcmDecoder(start.format, start.sample_rate, sr)
        self.segmenter = Segmenter(vad, self.cfg, sr, functools.partial(blank_cut, recognizer))
        self.state = StitchState()
        self.finals = 0
        self._pad = int(round(vad.padding * sr))
        self._recent = RecentAudio(int(round((self.cfg.max_segment + vad.padding) * sr)))
        self._last_cut = 0  # stream sample where the last decoded chunk's speech ended
        self._partial_every = int(round(partial_interval * sr))
        self._partial_at = 0
        self._partial_text = ""

    @property
    def seconds(self) -> float:
        """Audio received so far, in seconds."""
        return self.pcm.samples_in / self.pcm.rate

    def feed(self, data: bytes) -> list[dict]:
        """Consume a frame's bytes; return the final messages of segments it completed."""
        audio = self.pcm.decode(data)
        return self._push(audio)

    def finish(self) -> list[dict]:
        """End of stream: decode what is still open; return its final messages."""
        out = self._push(self.pcm.decode(b"", last=True))
        return out + self._decode(self.segmenter.finish())

    def _push(self, audio: np.ndarray) -> list[dict]:
        if not audio.size:
            return []
        self._recent.append(audio)
        return self._decode(self.segmenter.push(audio))

    def _decode(self, chunks) -> list[dict]:
        out = []
        for i in range(0, len(chunks), self.cfg.batch_size):
            batch = chunks[i : i + self.cfg.batch_size]
            for decoded in decode_chunks(self.recognizer, batch, self.options, self.cfg):
                seg = stitch(decoded, self.state, self.recognizer.tokenizer)
                if seg is not None:
                    self.finals += 1
                    out.append({"type": "final", **segment_json(self.finals, seg)})
            self._last_cut = max(self._last_cut, batch[-1].speech[1])
        if chunks:
            self._partial_text = ""
        return out

    def partial_due(self) -> bool:
        """Whether enough new audio of an open region has come in since the last partial."""
        if not self.start.partials or self.segmenter.vad.open_start is None:
            return False
        return self.segmenter.position - self._partial_at >= self._partial_every

    def partial(self) -> dict | None:
        """A partial message for the speech still open, or None (nothing new, or too short).

        The text is the CTC best path of the open audio (one encoder pass, no search), so a partial
        costs a fraction of a final; without a CTC head, greedy attention decoding stands in.
        """
        self._partial_at = self.segmenter.position
        open_start = self.segmenter.vad.open_start
        if open_start is None:
            return None
        begin = max(open_start - self._pad, self._last_cut)
        audio = self._recent.since(begin)
        sr = self.recognizer.sample_rate
        if len(audio) < MIN_PARTIAL_SECONDS * sr:
            return None
        text = self._open_text(audio)
        if not text or text == self._partial_text:
            return None
        self._partial_text = text
        return {"type": "partial", "segment": self.finals + 1, "start": round(max(begin, 0) / sr, 3),
                "text": text}

    def _open_text(self, audio: np.ndarray) -> str:
        import torch

        from asr.align import ctc_greedy

        rec = self.recognizer
        waves, lengths = torch.from_numpy(np.ascontiguousarray(audio))[None], torch.tensor([len(audio)])
        if rec.has_ctc:
            _, enc_lengths, ctc = rec.encode_with_ctc(waves, lengths)
            tokens = ctc_greedy(ctc, enc_lengths)[0]
        else:
            tokens = rec.decode_batch(waves, lengths, decode_options(1))[0][0].tokens
        return rec.tokenizer.decode(tokens).strip()


# ---------------------------------------------------------------------------------------------
# Admission.
# ---------------------------------------------------------------------------------------------


class Admission:
    """Counts streams and uploads in progress against ``limit``. Used from the event loop only."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    def enter(self) -> str | None:
        """Take a place; returns None, or the reason there is none."""
        if self.active >= self.limit:
            return f"server busy: {self.active} of {self.limit} sessions in use (--max-sessions); retry later"
        self.active += 1
        return None

    def leave(self) -> None:
        self.active -= 1
