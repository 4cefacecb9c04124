"""Manifest validation: every rejection kind, the outputs, the tokenizer alphabet and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import EXIT_PARTIAL, main
from asr.data.manifest import read_manifest
from asr.data.validate import ValidateConfig, validate_manifest
from asr.errors import ManifestError
from asr.tokenizer import Tokenizer


def tone(path: Path, seconds: float) -> str:
    sf.write(path, np.zeros(int(seconds * 16000), dtype=np.float32), 16000, subtype="PCM_16")
    return str(path)


def entry(uid: str, audio: str, duration: float, text: str = "HELLO", **kw) -> bytes:
    return json.dumps({"id": uid, "audio": audio, "duration": duration, "text": text, "speaker": "s", **kw}).encode()


@pytest.fixture
def manifest(tmp_path) -> Path:
    good = tone(tmp_path / "good.wav", 1.0)
    long = tone(tmp_path / "long.wav", 3.0)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really audio")
    lines = [
        entry("ok", "good.wav", 1.0),  # 1, relative path resolved against the manifest folder
        b"\xff\xfe not utf-8",  # 2
        b"{not json",  # 3
        json.dumps({"id": "nokeys"}).encode(),  # 4
        entry("ok", good, 1.0),  # 5 duplicate id
        entry("empty", good, 1.0, text="  "),  # 6
        entry("lower", good, 1.0, text="Hello"),  # 7
        entry("gone", str(tmp_path / "missing.wav"), 1.0),  # 8
        entry("garbage", str(tmp_path / "garbage.wav"), 1.0),  # 9
        entry("short", good, 0.5),  # 10 whole-file entry whose duration disagrees with the header
        entry("seg1", long, 1.0, offset=0.0),  # 11 segments of a shared file only have to fit
        entry("seg2", long, 1.5, offset=1.0),  # 12
        entry("seg3", long, 1.0, offset=2.5),  # 13 runs past the end
        b"",
        entry("near", good, 1.05),  # 15 within the tolerance
    ]
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


EXPECTED = {2: "bad-utf8", 3: "bad-json", 4: "bad-entry", 5: "duplicate-id", 6: "empty-text", 7: "bad-chars",
            8: "missing-audio", 9: "unreadable-audio", 10: "duration-mismatch", 13: "duration-mismatch"}


def test_every_rejection_kind(manifest, tmp_path):
    out, rejects = tmp_path / "valid.jsonl", tmp_path / "rejects.tsv"
    report = validate_manifest(ValidateConfig(str(manifest), out=str(out), rejects=str(rejects)))
    assert {r.line: r.kind for r in report.rejects} == EXPECTED
    assert report.lines == 14 and len(report.valid) + len(report.rejects) == report.lines
    assert [u.id for u in read_manifest(out)] == ["ok", "seg1", "seg2", "near"]
    rows = [line.split("\t") for line in rejects.read_text().splitlines()]
    assert [(int(r[0]), r[2]) for r in rows] == sorted(EXPECTED.items())
    assert all(len(r) == 4 and r[3] for r in rows)
    assert report.counts["duration-mismatch"] == 2
    assert "10 rejected" in report.summary()


def test_tolerance_and_no_audio_check(manifest):
    strict = validate_manifest(ValidateConfig(str(manifest), duration_tolerance=0.01))
    assert 15 in {r.line for r in strict.rejects}
    loose = validate_manifest(ValidateConfig(str(manifest), check_audio=False))
    assert {r.line for r in loose.rejects} == {2, 3, 4, 5, 6, 7}


def test_tokenizer_alphabet(tmp_path):
    tok = Tokenizer.train(["ABC ABC", "CAB BAC", "AB"] * 20, tmp_path / "tok", vocab_size=12, model_type="char")
    audio = tone(tmp_path / "a.wav", 1.0)
    path = tmp_path / "m.jsonl"
    path.write_bytes(entry("fine", audio, 1.0, text="CAB") + b"\n" + entry("bad", audio, 1.0, text="CAD") + b"\n")
    report = validate_manifest(ValidateConfig(str(path), tokenizer=str(tok.model_path)))
    assert [u.id for u in report.valid] == ["fine"]
    assert report.rejects[0].kind == "bad-chars" and "'D'" in report.rejects[0].reason
    # Without a tokenizer the LibriSpeech alphabet applies, and both are fine.
    assert len(validate_manifest(ValidateConfig(str(path))).valid) == 2


def test_unreadable_manifest_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        validate_manifest(ValidateConfig(str(tmp_path / "none.jsonl")))


def test_cli_exit_status(manifest, tmp_path, capsys):
    out = tmp_path / "v.jsonl"
    assert main(["manifest", "validate", str(manifest), "--out", str(out),
                 "--rejects", str(tmp_path / "r.tsv")]) == EXIT_PARTIAL
    assert "4 valid, 10 rejected" in capsys.readouterr().out
    assert main(["manifest", "validate", str(out)]) == 0
    # Without --rejects the rejects go beside --out, so none is dropped silently.
    assert main(["manifest", "validate", str(manifest), "--out", str(tmp_path / "w.jsonl")]) == EXIT_PARTIAL
    assert len((tmp_path / "w.rejects.tsv").read_text().splitlines()) == 10
