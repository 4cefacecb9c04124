"""Audio input: read any file libsndfile can decode as 16 kHz mono float32.

Every reader here turns a file into ``(samples,)`` float32 mono at ``sample_rate``: channels are averaged,
other rates are resampled with soxr's high-quality filter (the same one as
``librosa.resample(res_type="soxr_hq")``), and any problem with the file becomes an
:class:`asr.errors.AudioError` naming the file and the reason. No soundfile exception escapes.

Reads never trust the header for memory: a mutated header may claim billions of frames, so files are read
in bounded chunks until the data runs out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.errors import AudioError

SAMPLE_RATE = 16000  # every model in the toolkit consumes 16 kHz audio
MIN_SAMPLE_RATE = 1000  # below this a header is corrupt, not speech
MAX_SAMPLE_RATE = 768000  # the highest rate audio hardware records
_READ_CHUNK_SAMPLES = 1 << 20  # samples (frames x channels) per read: 4 MiB of float32
_RESAMPLE_QUALITY = "HQ"  # librosa's "soxr_hq"

# libsndfile reports these for unreadable, truncated or unsupported input; OSError covers unreadable paths.
_SF_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError, EOFError, MemoryError)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise AudioError(path, f"cannot stat file ({e.strerror})") from None
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _open(path: str | Path) -> tuple[Path, sf.SoundFile]:
    """Open ``path`` for reading after checking that it exists, is non-empty and has a sane header."""
    path = Path(path)
    _check_path(path)
    try:
        f = sf.SoundFile(str(path))
    except _SF_ERRORS as e:
        raise AudioError(path, f"not a readable audio file ({_short(e)})") from None
    try:
        _check_header(path, f)
    except AudioError:
        f.close()
        raise
    return path, f


def _check_header(path: Path, f: sf.SoundFile) -> None:
    if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(path, f"unsupported sample rate {f.samplerate} Hz in header")
    if f.channels < 1:
        raise AudioError(path, f"invalid channel count {f.channels} in header")
    if f.frames == 0:
        raise AudioError(path, "no audio samples (zero frames)")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    return text[:200]


def _read_mono(path: Path, f: sf.SoundFile, frames: int) -> np.ndarray:
    """Read up to ``frames`` frames (all remaining when negative) from the current position.

    Returns:
        audio: (samples,) float32 mono at the file's rate; shorter than asked when the data ends early.
    """
    chunk = _chunk_frames(f)
    parts = []
    remaining = frames
    while remaining != 0:
        want = chunk if remaining < 0 else min(chunk, remaining)
        try:
            block = f.read(want, dtype="float32", always_2d=True)
        except _SF_ERRORS as e:
            raise AudioError(path, f"cannot decode audio data ({_short(e)})") from None
        if block.shape[0] == 0:
            break
        parts.append(_to_mono(path, block))
        if remaining > 0:
            remaining -= block.shape[0]
        if block.shape[0] < want:
            break
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _chunk_frames(f: sf.SoundFile) -> int:
    """Frames per read call: bounded memory for every format but MP3.

    libsndfile 1.2's MPEG decoder returns wrong samples just after the boundary between two read calls,
    so MP3 is read in one call sized from the header (which only estimates MP3 lengths, hence the margin).
    """
    if f.format == "MP3":
        remaining = max(0, f.frames - f.tell()) if f.seekable() else f.frames
        return remaining + remaining // 8 + f.samplerate
    return max(1, _READ_CHUNK_SAMPLES // f.channels)


def _to_mono(path: Path, block: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 -> (frames,) float32, rejecting NaN/Inf samples."""
    if not np.isfinite(block).all():
        raise AudioError(path, "audio holds NaN or Inf samples")
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0])
    with np.errstate(over="ignore"):  # overflow becomes Inf, which _check_finite reports
        return block.mean(axis=1, dtype=np.float32)


def resample(audio: np.ndarray, orig_rate: float, target_rate: float) -> np.ndarray:
    """Resample with soxr's high-quality filter (librosa's ``soxr_hq``).

    Args:
        audio: (samples,) float32.
    Returns:
        (round(samples * target_rate / orig_rate),) float32.
    """
    if orig_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    import soxr  # imported on first use: audio at the model's rate needs no resampler

    out = soxr.resample(audio, orig_rate, target_rate, quality=_RESAMPLE_QUALITY)
    return np.asarray(out, dtype=np.float32)


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``audio`` ``factor`` times faster (tempo, pitch and formants together), as Kaldi's speed
    perturbation does: resampled by 1/factor and read at the original rate.

    Args:
        audio: (samples,) float32.
    Returns:
        (round(samples / factor),) float32.
    """
    return resample(audio, factor, 1.0)


def _check_finite(path: Path, audio: np.ndarray) -> np.ndarray:
    # finite float samples near the float32 limit overflow to Inf when channels are summed or resampled
    if not np.isfinite(audio).all():
        raise AudioError(path, "sample values overflow float32 (corrupt or absurdly scaled float data)")
    return audio


def load_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Load an audio file as mono float32 at ``sample_rate``.

    Only the window ``[offset, offset + duration)`` seconds is read from disk (a seek, not a full decode
    into memory). A window that runs past the end of the file is cut at the end.

    Args:
        path: any file libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3, ...), any rate and channel count.
        sample_rate: output rate in Hz.
        offset: start of the window in seconds.
        duration: length of the window in seconds; None reads to the end.
    Returns:
        audio: (samples,) float32, channels averaged.
    Raises:
        AudioError: missing, empty or unreadable file, corrupt header, no samples in the window, NaN/Inf.
    """
    if offset < 0 or (duration is not None and duration <= 0):
        raise AudioError(path, f"invalid window offset={offset} duration={duration}")
    path, f = _open(path)
    with f:
        rate = f.samplerate
        start = int(round(offset * rate))
        if start > 0 and start >= f.frames:
            raise AudioError(path, f"offset {offset:.3f} s is past the end ({f.frames / rate:.3f} s)")
        if start > 0:
            _seek(path, f, start)
        want = -1 if duration is None else max(1, int(round(duration * rate)))
        audio = _read_mono(path, f, want)
    if audio.size == 0:
        raise AudioError(path, "no audio samples could be decoded" + (f" at offset {offset:.3f} s" if start else ""))
    out = _check_finite(path, resample(audio, rate, sample_rate))
    if out.size == 0:
        raise AudioError(path, f"too short: {audio.size} sample(s) at {rate} Hz give none at {sample_rate} Hz")
    return out


def _seek(path: Path, f: sf.SoundFile, frame: int) -> None:
    try:
        f.seek(frame)
    except _SF_ERRORS as e:
        raise AudioError(path, f"cannot seek to frame {frame} ({_short(e)})") from None


def audio_duration(path: str | Path) -> float:
    """Duration in seconds, from the header only (no samples are decoded).

    Raises:
        AudioError: missing, empty or unreadable file, or a header with zero frames.
    """
    path, f = _open(path)
    with f:
        return f.frames / f.samplerate


def iter_blocks(
    path: str | Path, block_seconds: float = 30.0, sample_rate: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """Yield a long file as consecutive fixed-size blocks, reading and resampling as a stream.

    The resampler keeps its filter state across blocks (soxr's ``ResampleStream``), so the concatenated
    blocks equal one whole-file resample to float precision, with no clicks at block boundaries. Memory
    stays bounded by about two blocks whatever the file length.

    Args:
        path: any file :func:`load_audio` reads.
        block_seconds: block length in seconds at ``sample_rate``.
        sample_rate: output rate in Hz.
    Yields:
        block: (round(block_seconds * sample_rate),) float32 mono; the last block may be shorter.
    Raises:
        AudioError: as :func:`load_audio`; raised at the first ``next()`` for a bad header, or mid-stream
        for corrupt data.
    """
    block_size = int(round(block_seconds * sample_rate))
    if block_size < 1:
        raise AudioError(path, f"block of {block_seconds} s holds no samples at {sample_rate} Hz")
    path, f = _open(path)
    with f:
        rate = f.samplerate
        stream = None
        if rate != sample_rate:
            import soxr

            stream = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality=_RESAMPLE_QUALITY)
        read_frames = max(1, math.ceil(block_seconds * rate))
        if f.format == "MP3":
            read_frames = max(read_frames, _chunk_frames(f))
        pending = np.zeros(0, dtype=np.float32)
        produced = 0
        while True:
            chunk = _read_mono(path, f, read_frames)
            last = chunk.size < read_frames
            if stream is not None:
                chunk = np.asarray(stream.resample_chunk(chunk, last=last), dtype=np.float32)
            chunk = _check_finite(path, chunk)
            pending = np.concatenate([pending, chunk]) if pending.size else chunk
            while pending.size >= block_size:
                yield pending[:block_size].copy()
                produced += block_size
                pending = pending[block_size:]
            if last:
                break
        if pending.size:
            produced += pending.size
            yield pending
        if produced == 0:
            raise AudioError(path, "no audio samples could be decoded")
