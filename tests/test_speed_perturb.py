"""Speed perturbation: manifest copies, resampled audio, features, validation and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import change_speed
from asr.cli import main as cli_main
from asr.data.dataset import utterance_features
from asr.data.manifest import (
    Utterance,
    read_manifest,
    source_duration,
    speed_perturbed,
    write_manifest,
)
from asr.data.validate import ValidateConfig, validate_manifest
from asr.features import FeatureConfig

SR = 16000


def _tone(freq: float, seconds: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


def _peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum)) * SR / len(wave)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_change_speed_scales_length_and_pitch(factor):
    wave = _tone(500.0, 1.0)
    out = change_speed(wave, factor)
    assert abs(len(out) - len(wave) / factor) <= 1
    assert _peak_hz(out) == pytest.approx(500.0 * factor, abs=3.0)
    assert change_speed(wave, 1.0) is wave


def test_speed_perturbed_manifest_entries():
    utts = [Utterance("u1", "/a/u1.wav", 2.0, "ONE", "spk"), Utterance("u2", "/a/u2.wav", 1.0, "TWO", "")]
    out = speed_perturbed(utts, [0.9, 1.0, 1.1])
    assert [u.id for u in out] == ["sp0.9-u1", "u1", "sp1.1-u1", "sp0.9-u2", "u2", "sp1.1-u2"]
    slow = out[0]
    assert slow.speaker == "sp0.9-spk" and slow.text == "ONE" and slow.audio == "/a/u1.wav"
    assert slow.duration == pytest.approx(2.0 / 0.9, abs=1e-4)
    assert source_duration(slow) == pytest.approx(2.0, abs=1e-4)
    assert out[1] is utts[0] and out[4].speaker == ""
    with pytest.raises(ValueError, match="distinct"):
        speed_perturbed(utts, [0.9, 0.9])
    with pytest.raises(ValueError, match="already"):
        speed_perturbed(out, [1.0])


def test_features_of_a_perturbed_entry_come_from_the_resampled_audio(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(2000.0, 1.5), SR)
    cfg = FeatureConfig(n_mels=40)
    base = Utterance("a", str(tmp_path / "a.wav"), 1.5, "A", "s")
    by_factor = {u.extra.get("speed", 1.0): u for u in speed_perturbed([base], [0.9, 1.0, 1.1])}
    plain = utterance_features(by_factor[1.0], cfg)
    assert torch.equal(plain, utterance_features(base, cfg))
    for f in (0.9, 1.1):
        feats = utterance_features(by_factor[f], cfg)
        # Frames follow the perturbed length, i.e. the whole file was read, not `duration` seconds of it.
        assert abs(feats.shape[0] - plain.shape[0] / f) <= 2
        # The strongest mel band moves with the pitch: up when faster, down when slower.
        band, plain_band = int(feats.mean(0).argmax()), int(plain.mean(0).argmax())
        assert (band > plain_band) if f > 1 else (band < plain_band)


def test_validation_and_cli_accept_perturbed_manifests(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", _tone(200.0, 1.0), SR)
    write_manifest(tmp_path / "in.jsonl", [Utterance("a", "a.wav", 1.0, "A", "s")])
    assert cli_main(["manifest", "speed-perturb", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "sp.jsonl"),
                     "--factors", "0.9,1.0,1.1"]) == 0
    assert "3 utterances" in capsys.readouterr().out
    utts = read_manifest(tmp_path / "sp.jsonl")
    assert [u.extra.get("speed", 1.0) for u in utts] == [0.9, 1.0, 1.1]
    report = validate_manifest(ValidateConfig(manifest=str(tmp_path / "sp.jsonl")))
    assert not report.rejects, report.rejects
    # A perturbed entry whose duration does not match its file is still caught.
    bad = Utterance("sp1.1-x", str(tmp_path / "a.wav"), 0.5, "A", "s", 0.0, {"speed": 1.1})
    write_manifest(tmp_path / "bad.jsonl", [bad])
    report = validate_manifest(ValidateConfig(manifest=str(tmp_path / "bad.jsonl")))
    assert [r.kind for r in report.rejects] == ["duration-mismatch"]
    assert cli_main(["manifest", "speed-perturb", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "x.jsonl"),
                     "--factors", "0.9,abc"]) == 2
    assert "--factors" in capsys.readouterr().err
