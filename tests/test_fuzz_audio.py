"""Fuzz asr.audio with random and mutated bytes: only AudioError may come out, never a raw libsndfile error.

The pytest run is short and deterministic (derandomized, a few hundred examples per input kind). For a
longer, randomised hunt run this file as a script::

    .venv/bin/python tests/test_fuzz_audio.py [examples]     # default 20000 per strategy
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.audio import audio_duration, iter_blocks, load_audio
from asr.errors import AudioError

# scripts/fuzz.py sets ASR_FUZZ_EXAMPLES for a long randomised run; CI keeps the short fixed one.
EXAMPLES = int(os.environ.get("ASR_FUZZ_EXAMPLES", "400"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="ASR_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _seed_file(fmt: str, subtype: str, rate: int, channels: int) -> bytes:
    t = np.arange(int(0.05 * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    data = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


SEEDS = [
    _seed_file("WAV", "PCM_16", 16000, 1),
    _seed_file("WAV", "FLOAT", 8000, 2),
    _seed_file("WAV", "PCM_24", 44100, 1),
    _seed_file("FLAC", "PCM_16", 16000, 1),
    _seed_file("FLAC", "PCM_24", 22050, 2),
]


@st.composite
def mutated(draw) -> bytes:
    """A valid small WAV/FLAC with bytes flipped, a truncation, or a splice of another seed."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "header", "truncate", "splice", "insert"]))
        if not data:
            break
        if kind == "flip":
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, len(data) - 1))
                data[i] ^= draw(st.integers(1, 255))
        elif kind == "header":  # headers hold the rate, channel count and sizes: hit them hardest
            i = draw(st.integers(0, min(len(data), 64) - 1))
            data[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            cut = draw(st.integers(0, len(data)))
            start = draw(st.integers(0, len(other)))
            data = data[:cut] + other[start:]
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _check(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)
    for read in (load_audio, audio_duration, lambda p: sum(b.size for b in iter_blocks(p, 0.01))):
        try:
            out = read(path)
        except AudioError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            continue
        if isinstance(out, np.ndarray):
            assert out.dtype == np.float32 and out.ndim == 1 and out.size > 0
            assert np.isfinite(out).all()


@pytest.fixture(scope="module")
def fuzz_path():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "fuzz.wav"


RANDOM_BYTES = st.binary(min_size=0, max_size=512)


@FUZZ_SETTINGS
@given(payload=RANDOM_BYTES)
def test_random_bytes_only_raise_audio_error(fuzz_path, payload):
    _check(fuzz_path, payload)


@FUZZ_SETTINGS
@given(payload=mutated())
def test_mutated_files_only_raise_audio_error(fuzz_path, payload):
    _check(fuzz_path, payload)


def _long_run(strategy, examples: int, target: Path) -> None:
    @settings(FUZZ_SETTINGS, max_examples=examples, derandomize=False)
    @given(payload=strategy)
    def run(payload):
        _check(target, payload)

    run()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with tempfile.TemporaryDirectory() as d:
        for name, strategy in (("random bytes", RANDOM_BYTES), ("mutated files", mutated())):
            _long_run(strategy, n, Path(d) / "fuzz.wav")
            print(f"{name}: {n} examples, only AudioError")
