"""asr.features: log-mel parity with librosa, padding invariance, frame counts, CMVN."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import torch

from asr.config import from_dict
from asr.errors import ConfigError, DataError
from asr.features import FeatureConfig, GlobalCMVN, LogMel, log_mel, mel_matrix, num_frames

CONFIGS = [
    FeatureConfig(),
    FeatureConfig(n_fft=400, win_length=400, hop_length=100, n_mels=40, fmin=0.0, fmax=8000.0),
    FeatureConfig(sample_rate=8000, n_fft=256, win_length=201, hop_length=80, n_mels=23, fmax=3800.0),
]


def librosa_power(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(frames, n_mels) mel power from librosa in float64 with matched settings."""
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float64),
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
    )
    return mel.T


def speechlike(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(n)
    return x.astype(np.float32)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "n400", "8k-odd-window"])
def test_mel_matrix_equals_librosa(cfg):
    ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    ours = mel_matrix(cfg)
    assert ours.shape == (cfg.n_fft // 2 + 1, cfg.n_mels)
    np.testing.assert_allclose(ours, ref.T, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "n400", "8k-odd-window"])
@pytest.mark.parametrize("n", [2000, 16037])
def test_parity_with_librosa_power_domain(cfg, n):
    x = speechlike(n)
    ours = np.exp(log_mel(x, cfg).astype(np.float64))
    ref = np.maximum(librosa_power(x, cfg), cfg.log_floor)
    assert ours.shape == ref.shape == (num_frames(n, cfg), cfg.n_mels)
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert rel < 1e-4


def test_parity_with_torchaudio():
    torchaudio = pytest.importorskip("torchaudio", reason="torchaudio is not importable in this environment")
    cfg = FeatureConfig()
    x = torch.from_numpy(speechlike(8000))
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        win_length=cfg.win_length,
        hop_length=cfg.hop_length,
        f_min=cfg.fmin,
        f_max=cfg.fmax,
        n_mels=cfg.n_mels,
        center=True,
        pad_mode="constant",
        power=2.0,
        norm="slaney",
        mel_scale="slaney",
    )
    ref = transform(x).T.double().clamp(min=cfg.log_floor)
    ours = torch.exp(LogMel(cfg)(x[None])[0][0].double())
    assert float(torch.linalg.norm(ours - ref) / torch.linalg.norm(ref)) < 1e-4


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 399, 400, 16000, 16001])
def test_num_frames_matches_output(n):
    cfg = FeatureConfig()
    assert log_mel(np.zeros(n, dtype=np.float32), cfg).shape == (num_frames(n, cfg), cfg.n_mels)
    lengths = torch.tensor([n, 2 * n])
    assert num_frames(lengths, cfg).tolist() == [num_frames(n, cfg), num_frames(2 * n, cfg)]


def test_batch_equals_single_even_with_garbage_padding():
    cfg = FeatureConfig()
    module = LogMel(cfg)
    lengths = [16000, 12345, 4001, 401, 160, 1]
    waves = [torch.from_numpy(speechlike(n, seed=i)) for i, n in enumerate(lengths)]
    batch = torch.full((len(waves), max(lengths) + 777), float("nan"))  # padding must never be read
    for i, w in enumerate(waves):
        batch[i, : w.numel()] = w
    feats, frame_lengths = module(batch, torch.tensor(lengths))
    assert feats.shape == (len(waves), num_frames(batch.shape[1], cfg), cfg.n_mels)
    for i, w in enumerate(waves):
        single, single_len = module(w[None])
        n = int(frame_lengths[i])
        assert n == int(single_len[0]) == num_frames(lengths[i], cfg)
        assert torch.equal(feats[i, :n], single[0])
        assert torch.all(feats[i, n:] == 0)


def test_pure_tone_lands_in_its_mel_band():
    cfg = FeatureConfig()
    t = np.arange(16000) / 16000
    feats = log_mel((0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32), cfg)
    centres = librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax)[1:-1]
    peak = int(np.argmax(feats[50:-50].mean(axis=0)))
    assert abs(centres[peak] - 1000.0) < (centres[peak + 1] - centres[peak - 1])


def test_silence_hits_the_log_floor():
    cfg = FeatureConfig(log_floor=1e-8)
    feats = log_mel(np.zeros(3200, dtype=np.float32), cfg)
    np.testing.assert_allclose(feats, np.log(1e-8), rtol=1e-6)


def test_feature_config_validation():
    with pytest.raises(ValueError):
        FeatureConfig(win_length=600, n_fft=512)
    with pytest.raises(ValueError):
        FeatureConfig(fmax=9000.0)
    with pytest.raises(ConfigError):
        from_dict(FeatureConfig, {"n_mels": 0}, "features")
    with pytest.raises(ConfigError):
        from_dict(FeatureConfig, {"n_mel": 80}, "features")


def random_feats(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((frames, 80)) * np.linspace(0.5, 3, 80) + np.linspace(-20, 5, 80)).astype(np.float32)


def test_cmvn_chunked_and_merged_equal_whole():
    chunks = [random_feats(n, seed=n) for n in (1, 37, 500, 1203)]
    whole = np.concatenate(chunks).astype(np.float64)
    streamed = GlobalCMVN(80)
    for c in chunks:
        streamed.accumulate(c)
    worker_a, worker_b = GlobalCMVN(80), GlobalCMVN(80)
    worker_a.accumulate(chunks[0])
    worker_a.accumulate(torch.from_numpy(chunks[1]))
    for c in chunks[2:]:
        worker_b.accumulate(c)
    merged = worker_a.merge(worker_b)
    for cmvn in (streamed, merged):
        mean, std = cmvn.finalize()
        np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(std, whole.std(axis=0), rtol=1e-5)
    normed = streamed.apply(whole.astype(np.float32))
    np.testing.assert_allclose(normed.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(normed.std(axis=0), 1.0, atol=1e-4)
    as_tensor = streamed.apply(torch.from_numpy(whole.astype(np.float32)))
    np.testing.assert_allclose(as_tensor.numpy(), normed, atol=1e-5)


def test_cmvn_constant_band_does_not_divide_by_zero():
    feats = random_feats(100, seed=1)
    feats[:, 3] = -23.0
    cmvn = GlobalCMVN(80)
    cmvn.accumulate(feats)
    assert np.isfinite(cmvn.apply(feats)).all()


def test_cmvn_save_load_round_trip(tmp_path):
    cmvn = GlobalCMVN(80)
    cmvn.accumulate(random_feats(300, seed=2))
    path = tmp_path / "cmvn.json"
    cmvn.save(path)
    loaded = GlobalCMVN.load(path)
    for a, b in zip(cmvn.finalize(), loaded.finalize()):
        np.testing.assert_array_equal(a, b)
    # loaded stats keep accumulating exactly like the original
    extra = random_feats(50, seed=3)
    cmvn.accumulate(extra)
    loaded.accumulate(extra)
    np.testing.assert_allclose(cmvn.finalize()[1], loaded.finalize()[1], rtol=1e-12)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_cmvn_errors(tmp_path):
    with pytest.raises(DataError):
        GlobalCMVN(80).finalize()
    with pytest.raises(DataError):
        GlobalCMVN.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError):
        GlobalCMVN.load(bad)
    bad.write_text(json.dumps({"n_mels": 80, "count": 3, "sum": [0.0] * 79, "sumsq": [1.0] * 80}))
    with pytest.raises(DataError):
        GlobalCMVN.load(bad)
    with pytest.raises(ValueError):
        GlobalCMVN(80).accumulate(np.zeros((4, 40)))
