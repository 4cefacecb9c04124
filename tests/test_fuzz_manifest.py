"""Property tests: any bytes given as a manifest either read or raise ManifestError; the validator
never raises on entries and accounts for every non-blank line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.data.manifest import read_manifest
from asr.data.validate import ValidateConfig, validate_manifest
from asr.errors import ManifestError

FUZZ = settings(max_examples=int(os.environ.get("ASR_FUZZ_EXAMPLES", "120")), deadline=None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    sf.write(folder / "a.wav", np.zeros(8000, dtype=np.float32), 16000, subtype="PCM_16")
    return folder


def valid_manifest(folder: Path) -> bytes:
    lines = [{"id": f"u{i}", "audio": "a.wav", "offset": 0.0, "duration": 0.5, "text": "HELLO THERE",
              "speaker": "s", "feats": "x.npy"} for i in range(3)]
    return "".join(json.dumps(e) + "\n" for e in lines).encode()


def check(folder: Path, data: bytes) -> None:
    path = folder / "m.jsonl"
    path.write_bytes(data)
    try:
        read_manifest(path)
    except ManifestError:
        pass
    report = validate_manifest(ValidateConfig(str(path)))
    non_blank = sum(1 for line in data.split(b"\n") if line.strip())
    assert report.lines == non_blank == len(report.valid) + len(report.rejects)


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(folder, data):
    check(folder, data)


@st.composite
def mutated(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "splice"]))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            data[pos:pos] = draw(st.sampled_from([b'"', b"{", b"}", b"\n", b"null", b"-1", b"1e999", b"NaN",
                                                  b'"id":', b'"duration":"x"', b"\\u0000", b"[]"]))
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_mutated_valid_manifest(folder, data):
    check(folder, data.draw(mutated(valid_manifest(folder))))


def test_unmutated_manifest_is_all_valid(folder):
    path = folder / "clean.jsonl"
    path.write_bytes(valid_manifest(folder))
    assert [u.id for u in read_manifest(path)] == ["u0", "u1", "u2"]
    report = validate_manifest(ValidateConfig(str(path)))
    assert len(report.valid) == 3 and not report.rejects


HUGE_NUMBERS = [b'{"id":"a","audio":"a.wav","duration":1' + b"0" * 400 + b"}",
                b'{"id":"a","audio":"a.wav","duration":1' + b"0" * 5000 + b"}"]


@pytest.mark.parametrize("line", HUGE_NUMBERS, ids=["float-overflow", "int-digit-limit"])
def test_validator_rejects_huge_numbers(folder, line):
    path = folder / "huge.jsonl"
    path.write_bytes(line + b"\n")
    report = validate_manifest(ValidateConfig(str(path)))
    assert [r.kind for r in report.rejects] in (["bad-entry"], ["bad-json"])


@pytest.mark.parametrize("line", HUGE_NUMBERS, ids=["float-overflow", "int-digit-limit"])
def test_read_manifest_huge_numbers(folder, line):
    path = folder / "huge.jsonl"
    path.write_bytes(line + b"\n")
    with pytest.raises(ManifestError):
        read_manifest(path)


def test_validator_rejects_nul_in_audio_path(folder):
    path = folder / "nul.jsonl"
    path.write_bytes(b'{"id":"a","audio":"a\\u0000.wav","duration":0.5,"text":"A"}\n')
    assert [r.kind for r in validate_manifest(ValidateConfig(str(path))).rejects] == ["missing-audio"]
