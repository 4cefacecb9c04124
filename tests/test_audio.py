"""asr.audio: formats, rates, channels, sample types, windows, the block reader and every bad input."""

from __future__ import annotations

import math
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from asr.audio import SAMPLE_RATE, audio_duration, iter_blocks, load_audio
from asr.errors import AudioError


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * rate / x.size)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def write(path, data, rate, **kw):
    # libsndfile's Vorbis encoder crashes on very large single writes, so write in blocks
    with sf.SoundFile(str(path), "w", rate, 1 if data.ndim == 1 else data.shape[1], **kw) as f:
        for i in range(0, len(data), 8192):
            f.write(data[i : i + 8192])
    return path


@pytest.mark.parametrize(
    "ext,fmt,subtype,lossless",
    [
        ("wav", "WAV", "PCM_16", True),
        ("flac", "FLAC", "PCM_16", True),
        ("ogg", "OGG", "VORBIS", False),
        ("mp3", "MP3", "MPEG_LAYER_III", False),
    ],
)
def test_format_round_trip(tmp_path, ext, fmt, subtype, lossless):
    x = sine(440.0, 2.0, SAMPLE_RATE)
    path = tmp_path / f"a.{ext}"
    try:
        write(path, x, SAMPLE_RATE, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError) as e:
        pytest.skip(f"this libsndfile cannot write {fmt}: {e}")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    if lossless:
        assert y.size == x.size
        np.testing.assert_allclose(y, x, atol=1.0 / 32768)
    else:
        # lossy codecs add encoder delay/padding but keep the tone and its energy
        assert abs(y.size - x.size) < 0.1 * x.size
        assert abs(peak_hz(y, SAMPLE_RATE) - 440.0) < 2.0
        assert rms(y) == pytest.approx(rms(x), rel=0.05)
    # the block reader must decode the same samples (MP3 has a read-boundary bug we work around)
    blocks = np.concatenate(list(iter_blocks(path, block_seconds=0.5)))
    np.testing.assert_allclose(blocks, y, atol=1e-5)
    assert audio_duration(path) == pytest.approx(2.0, rel=0.1 if not lossless else 1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_frequency_and_energy(tmp_path, rate):
    x = sine(1000.0, 1.5, rate)
    path = write(tmp_path / "a.wav", x, rate, subtype="FLOAT")
    y = load_audio(path)
    assert abs(y.size - x.size * SAMPLE_RATE / rate) <= 1
    assert abs(peak_hz(y, SAMPLE_RATE) - 1000.0) < 1.5
    core = slice(1600, -1600)  # filter edge transients
    assert rms(y[core]) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)


def test_resampling_removes_content_above_new_nyquist(tmp_path):
    # 6 kHz at 48 kHz cannot exist at 8 kHz: a high-quality resampler removes it, a naive one aliases
    x = sine(6000.0, 1.0, 48000)
    y = load_audio(write(tmp_path / "a.wav", x, 48000, subtype="FLOAT"), sample_rate=8000)
    assert rms(y[800:-800]) < 1e-3


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_channels_are_averaged(tmp_path, channels):
    rng = np.random.default_rng(channels)
    data = (0.3 * rng.standard_normal((8000, channels))).clip(-1, 1).astype(np.float32)
    path = write(tmp_path / "a.wav", data, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), data.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize(
    "subtype,atol",
    [("PCM_U8", 2 / 2**8), ("PCM_16", 2 / 2**16), ("PCM_24", 2 / 2**24), ("PCM_32", 1e-7), ("FLOAT", 1e-7), ("DOUBLE", 1e-7)],
)
def test_sample_types(tmp_path, subtype, atol):
    x = sine(300.0, 0.5, SAMPLE_RATE)
    path = tmp_path / "a.wav"
    sf.write(str(path), x.astype(np.float64), SAMPLE_RATE, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=atol)


def test_offset_and_duration_read_only_the_window(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32)
    path = write(tmp_path / "a.wav", x, SAMPLE_RATE, subtype="FLOAT")
    requested = []
    original = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        start = self.tell()
        out = original(self, frames, *args, **kwargs)
        requested.append((start, frames, len(out)))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    y = load_audio(path, offset=1.25, duration=0.5)
    np.testing.assert_array_equal(y, x[20000:28000])
    # A seek to the window, then only its frames: no read of the whole file (frames=-1) or from its start.
    assert requested and all(0 < frames <= 8000 for _, frames, _ in requested), requested
    assert requested[0][0] == 20000 and sum(n for _, _, n in requested) == 8000, requested
    requested.clear()
    # a window past the end is cut at the end
    np.testing.assert_array_equal(load_audio(path, offset=2.5, duration=10.0), x[40000:])


def test_offset_window_with_resampling_matches_whole_file(tmp_path):
    x = sine(700.0, 3.0, 48000)
    path = write(tmp_path / "a.wav", x, 48000, subtype="FLOAT")
    whole = load_audio(path)
    part = load_audio(path, offset=1.0, duration=1.0)
    assert part.size == SAMPLE_RATE
    # away from the window's own edges the two resamplings agree
    np.testing.assert_allclose(part[400:-400], whole[16400:31600], atol=1e-4)


def test_audio_duration_reads_header_only(tmp_path, monkeypatch):
    path = write(tmp_path / "a.flac", sine(100.0, 2.5, 22050), 22050, format="FLAC")
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded samples"))
    assert audio_duration(path) == pytest.approx(2.5)


@pytest.mark.parametrize("rate,channels", [(16000, 1), (48000, 2), (22050, 1)])
def test_blocks_equal_whole_file(tmp_path, rate, channels):
    rng = np.random.default_rng(rate)
    data = (0.2 * rng.standard_normal((int(7.3 * rate), channels))).astype(np.float32)
    path = write(tmp_path / "a.wav", data, rate, subtype="FLOAT")
    blocks = list(iter_blocks(path, block_seconds=2.0))
    sizes = [b.size for b in blocks]
    assert sizes[:-1] == [32000] * (len(blocks) - 1) and 0 < sizes[-1] <= 32000
    assert all(b.dtype == np.float32 for b in blocks)
    # the stream resampler carries its state across blocks: no discontinuity at the joins
    np.testing.assert_allclose(np.concatenate(blocks), load_audio(path), atol=1e-5)


def test_block_reader_memory_is_bounded(tmp_path, monkeypatch):
    rate, seconds, block = 48000, 60, 0.5
    path = write(tmp_path / "long.wav", sine(440.0, seconds, rate), rate, subtype="PCM_16")
    requested = []
    original = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    tracemalloc.start()
    try:
        total = sum(b.size for b in iter_blocks(path, block_seconds=block))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == seconds * SAMPLE_RATE
    assert 0 < max(requested) <= block * rate  # never more than one block of input per read
    whole_output_bytes = seconds * SAMPLE_RATE * 4
    assert peak < whole_output_bytes / 10, f"peak {peak} bytes for a {whole_output_bytes}-byte output"


def _wav_header(rate=16000, channels=1, bits=16, fmt_code=1, data_bytes=0) -> bytes:
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_code, channels, rate, rate * block_align, block_align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", len(body) + data_bytes) + body


def _bad_files(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(str(good), sine(440.0, 0.2, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    nan = sine(440.0, 0.2, SAMPLE_RATE)
    nan[100] = np.nan
    inf = sine(440.0, 0.2, SAMPLE_RATE)
    inf[5] = np.inf
    files = {
        "missing": tmp_path / "nope.wav",
        "directory": tmp_path,
        "empty": tmp_path / "empty.wav",
        "zero samples": tmp_path / "zero.wav",
        "not audio": tmp_path / "text.wav",
        "truncated header": tmp_path / "trunc.wav",
        "nan": tmp_path / "nan.wav",
        "inf": tmp_path / "inf.flac",
        "unsupported codec": tmp_path / "codec.wav",
        "absurd sample rate": tmp_path / "rate.wav",
        "overflowing floats": tmp_path / "huge.wav",
        "one sample at 44.1 kHz": tmp_path / "one.wav",
    }
    files["empty"].write_bytes(b"")
    sf.write(str(files["zero samples"]), np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    files["not audio"].write_text("id,text\n1,hello world\n" * 20)
    files["truncated header"].write_bytes(good.read_bytes()[:22])
    sf.write(str(files["nan"]), nan, SAMPLE_RATE, subtype="FLOAT")
    with open(files["inf"], "wb") as f:  # FLAC cannot hold Inf; a float WAV named .flac is still sniffed
        sf.write(f, inf, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    files["unsupported codec"].write_bytes(_wav_header(fmt_code=0x1234, data_bytes=400) + bytes(400))
    files["absurd sample rate"].write_bytes(_wav_header(rate=3, data_bytes=400) + bytes(400))
    # finite float32 samples whose channel mean and resampling overflow to Inf
    huge = np.full((800, 2), 3e38, dtype=np.float32)
    huge[::2] *= -1
    sf.write(str(files["overflowing floats"]), huge, 8000, subtype="FLOAT")
    sf.write(str(files["one sample at 44.1 kHz"]), np.full(1, 0.5, dtype=np.float32), 44100)
    return files


BAD_CASES = [
    "missing",
    "directory",
    "empty",
    "zero samples",
    "not audio",
    "truncated header",
    "nan",
    "inf",
    "unsupported codec",
    "absurd sample rate",
    "overflowing floats",
    "one sample at 44.1 kHz",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_audio_error(tmp_path, case):
    path = _bad_files(tmp_path)[case]
    with pytest.raises(AudioError) as err:
        load_audio(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(AudioError):
        list(iter_blocks(path, block_seconds=0.05))
    if case not in ("nan", "inf", "overflowing floats", "one sample at 44.1 kHz"):  # headers are fine
        with pytest.raises(AudioError):
            audio_duration(path)


def test_bad_window_arguments(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), sine(440.0, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    for kwargs in ({"offset": -1.0}, {"duration": 0.0}, {"offset": 5.0}):
        with pytest.raises(AudioError):
            load_audio(path, **kwargs)


def test_truncated_data_returns_what_is_there(tmp_path):
    # a recording cut off mid-write: the header promises more than the file holds
    path = tmp_path / "a.wav"
    x = sine(440.0, 1.0, SAMPLE_RATE)
    sf.write(str(path), x, SAMPLE_RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    y = load_audio(path)
    assert 0 < y.size < x.size
    np.testing.assert_allclose(y, x[: y.size], atol=1.0 / 32768)
