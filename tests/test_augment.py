"""On-the-fly training augmentation (asr.augment): each transform does what it claims, only in training,
keeps shapes and lengths (or changes them by the drawn factor), is seeded per (epoch, item), and a resumed
run continues with exactly the augmentation of an uninterrupted one."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from asr import checkpoint as ckpt
from asr.augment import (
    AugmentConfig,
    Augmenter,
    change_tempo,
    mix_mel,
    noise_mel_profile,
    reverb_mel,
    rir_envelope,
    warp_mel,
)
from asr.config import from_dict, replace
from asr.data.dataset import AsrDataset, EpochKeyed, make_loader
from asr.data.effects import coloured_noise
from asr.data.manifest import Utterance, write_manifest
from asr.data.sampler import DynamicBucketSampler
from asr.errors import ConfigError
from asr.features import FeatureConfig, LogMel, log_mel, mel_warp_matrix

CFG = FeatureConfig(n_mels=40)


def _tone(hz: float, seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _peak_band(feats: np.ndarray | torch.Tensor) -> int:
    return int(np.asarray(feats)[5:-5].mean(axis=0).argmax())


@pytest.fixture(scope="module")
def utts(tmp_path_factory):
    d = tmp_path_factory.mktemp("aug")
    out = []
    for i in range(6):
        rng = np.random.default_rng(i)
        wave = _tone(300 + 150 * i, 0.4 + 0.1 * i) + 0.01 * rng.standard_normal(int((0.4 + 0.1 * i) * 16000))
        sf.write(d / f"u{i}.wav", wave.astype(np.float32), 16000)
        out.append(Utterance(f"u{i}", str(d / f"u{i}.wav"), 0.4 + 0.1 * i, "A B", "s"))
    return out


def test_config_checks_and_defaults_are_off():
    assert not AugmentConfig().enabled
    assert AugmentConfig(vtlp=0.1).enabled
    with pytest.raises(ConfigError, match="vtlp"):
        from_dict(AugmentConfig, {"vtlp": 0.7}, "augment")
    with pytest.raises(ConfigError, match="snr_low"):
        from_dict(AugmentConfig, {"snr_low": 30.0, "snr_high": 10.0}, "augment")


def test_vtlp_filterbank_moves_a_tone_by_the_warp():
    wave = _tone(1500.0)
    plain = LogMel(CFG)(torch.from_numpy(wave)[None])[0][0].numpy()
    up = LogMel(CFG, warp=1.1)(torch.from_numpy(wave)[None])[0][0].numpy()
    down = LogMel(CFG, warp=0.9)(torch.from_numpy(wave)[None])[0][0].numpy()
    # The warped filterbank sees 1500 Hz where 1650 Hz (1350 Hz) would be: the same as a tone there.
    assert _peak_band(up) == _peak_band(log_mel(_tone(1650.0), CFG)) > _peak_band(plain)
    assert _peak_band(down) == _peak_band(log_mel(_tone(1350.0), CFG)) < _peak_band(plain)
    assert up.shape == plain.shape


def test_vtlp_on_cached_features_matches_the_warped_filterbank():
    assert np.allclose(mel_warp_matrix(CFG, 1.0), np.eye(CFG.n_mels), atol=1e-6)
    for hz in (700.0, 1500.0, 3000.0):
        plain = torch.from_numpy(log_mel(_tone(hz), CFG))
        for alpha in (0.9, 1.1):
            by_bank = LogMel(CFG, warp=alpha)(torch.from_numpy(_tone(hz))[None])[0][0]
            warped = warp_mel(plain, CFG, alpha)
            assert warped.shape == plain.shape
            assert abs(_peak_band(warped) - _peak_band(by_bank)) <= 1


def test_tempo_changes_length_by_the_factor():
    feats = torch.randn(101, 40)
    assert torch.equal(change_tempo(feats, 1.0), feats)
    assert change_tempo(feats, 1.25).shape == (81, 40)
    assert change_tempo(feats, 0.8).shape == (126, 40)
    ramp = torch.arange(101, dtype=torch.float32)[:, None].expand(101, 40)
    slow = change_tempo(ramp, 0.5)  # a ramp stays a ramp from the first frame to the last
    assert torch.allclose(slow[:, 0], torch.linspace(0, 100, 202), atol=1e-4)


def test_noise_in_the_mel_domain_has_the_requested_snr():
    feats = torch.from_numpy(log_mel(_tone(500.0), CFG))
    noise = np.tile(noise_mel_profile(CFG, 1.0), (feats.shape[0], 1))
    for snr in (0.0, 10.0):
        mixed = mix_mel(feats, noise, snr, CFG.log_floor)
        added = np.exp(mixed.double().numpy()) - np.exp(feats.double().numpy())
        measured = 10 * np.log10(np.exp(feats.double().numpy()).sum(1).mean() / added.sum(1).mean())
        assert measured == pytest.approx(snr, abs=0.05)
        assert mixed.shape == feats.shape


def test_pink_noise_falls_with_frequency():
    rng = np.random.default_rng(0)
    spec = np.abs(np.fft.rfft(coloured_noise(32000, 1.0, rng))) ** 2
    low, high = spec[100:1000].mean(), spec[10000:16000].mean()
    assert 10 < low / high < 40  # 1/f: power ratio ~ mean frequency ratio (~23)
    assert profile_falls(1.0) and not profile_falls(-1.0)


def profile_falls(exponent: float) -> bool:
    p = noise_mel_profile(CFG, exponent)
    return bool(p[5] > p[-5])


def test_reverb_in_the_mel_domain_smears_and_keeps_energy():
    feats = torch.full((60, 40), np.log(CFG.log_floor), dtype=torch.float32)
    feats[10:13] = 0.0  # a 30 ms burst
    rir = np.exp(-np.arange(8000) / 1600.0) * np.random.default_rng(0).standard_normal(8000)
    env = rir_envelope(rir.astype(np.float32), CFG)
    wet = reverb_mel(feats, env, CFG.log_floor)
    assert wet.shape == feats.shape
    assert float(wet.double().exp().sum()) == pytest.approx(float(feats.double().exp().sum()), rel=1e-6)
    assert (wet[20:30] > -5).all()  # the tail outlasts the burst


def test_pyroomacoustics_bank_is_seeded_and_cached(tmp_path):
    if os.environ.get("CI", "").lower() != "true":  # in CI a missing dependency is a failure
        pytest.importorskip("pyroomacoustics", reason="pip install 'asr[augment]'")
    cfg = AugmentConfig(reverb_prob=1.0, rir_bank=2, rir_cache=str(tmp_path))
    first = Augmenter(cfg, CFG).rirs()
    assert len(list(tmp_path.glob("rirs-*.npz"))) == 1
    again = Augmenter(cfg, CFG).rirs()  # read back from the cache
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(r.ndim == 1 and abs(r[0]) == np.abs(r).max() for r in first)  # direct path first


def _items(ds, keys):
    return [ds[k]["feats"] for k in keys]


@pytest.mark.parametrize("source", ["audio", "cached"])
def test_dataset_augments_training_items_only_seeded_per_epoch(utts, tmp_path, source):
    if source == "cached":
        from asr.data.featstage import FeatStageConfig, run_feature_stage
        from asr.data.manifest import read_manifest

        write_manifest(tmp_path / "m.jsonl", utts)
        result = run_feature_stage(tmp_path / "m.jsonl", tmp_path / "feats", CFG,
                                   FeatStageConfig(nj=1, shard_size=4, progress=False))
        utts = read_manifest(result.manifest)
    cfg = AugmentConfig(vtlp=0.1, noise_prob=0.5, babble_prob=0.5, snr_low=5.0, snr_high=20.0)
    plain = AsrDataset(utts, None, CFG, source=source)
    aug = AsrDataset(utts, None, CFG, source=source, augment=Augmenter(cfg, CFG, seed=3))
    # integer keys (validation, decoding) are never augmented
    for a, b in zip(_items(plain, range(6)), _items(aug, range(6))):
        assert torch.equal(a, b)
    e0 = _items(aug, [(0, i) for i in range(6)])
    assert all(torch.equal(a, b) for a, b in zip(e0, _items(aug, [(0, i) for i in range(6)])))  # seeded
    assert all(a.shape == b.shape for a, b in zip(e0, _items(plain, range(6))))  # lengths kept
    assert sum(not torch.equal(a, b) for a, b in zip(e0, _items(plain, range(6)))) == 6
    e1 = _items(aug, [(1, i) for i in range(6)])
    assert all(not torch.equal(a, b) for a, b in zip(e0, e1))  # a new draw each epoch
    other_seed = AsrDataset(utts, None, CFG, source=source, augment=Augmenter(cfg, CFG, seed=4))
    assert not torch.equal(other_seed[(0, 0)]["feats"], e0[0])


def test_speed_and_pitch_on_audio(utts):
    spd = AsrDataset(utts, None, CFG, augment=Augmenter(AugmentConfig(speed=0.2), CFG))
    pitch = AsrDataset(utts, None, CFG, augment=Augmenter(AugmentConfig(pitch=4.0), CFG))
    plain = AsrDataset(utts, None, CFG)
    frames = [plain[i]["feats"].shape[0] for i in range(6)]
    fast = [spd[(0, i)]["feats"].shape[0] for i in range(6)]
    assert fast != frames and all(0.8 * f - 2 <= g <= 1.25 * f + 2 for f, g in zip(frames, fast))
    # pitch moves the tone but keeps the duration
    shifted = [pitch[(0, i)]["feats"] for i in range(6)]
    assert all(abs(s.shape[0] - f) <= 2 for s, f in zip(shifted, frames))
    assert any(_peak_band(s.numpy()) != _peak_band(plain[i]["feats"].numpy()) for i, s in enumerate(shifted))


def test_loader_keys_items_by_the_sampler_epoch(utts):
    ds = AsrDataset(utts, None, CFG, augment=Augmenter(AugmentConfig(vtlp=0.1), CFG))
    sampler = DynamicBucketSampler(ds.durations, 2.0, shuffle=True, seed=0)
    loader = make_loader(ds, sampler)
    assert isinstance(loader.batch_sampler, EpochKeyed) and len(loader) == len(sampler)
    sampler.set_epoch(2)
    keys = [k for batch in loader.batch_sampler for k in batch]
    assert {e for e, _ in keys} == {2} and sorted(i for _, i in keys) == list(range(6))
    first = next(iter(loader))
    assert first.feats.shape[0] == len(first.ids)
    # without an augmenter the loader is the plain one
    assert not isinstance(make_loader(AsrDataset(utts, None, CFG), sampler).batch_sampler, EpochKeyed)


def test_resume_is_exact_with_augmentation_and_a_specaugment_schedule(tiny_corpus, tiny_config, tmp_path):
    from asr.train import train

    dev = tmp_path / "dev.jsonl"
    write_manifest(dev, tiny_corpus.utts[:3])
    common = dict(max_duration=3.0, checkpoint_every_steps=0, dev_wer_utts=2, warmup_steps=2)
    n = 4

    def noisy(**kw):
        cfg = tiny_config(**common, **kw)
        model = replace(cfg.model, dropout=0.2)
        spec = replace(cfg.specaug, policy="custom", freq_mask_width=8, num_freq_masks=1, time_mask_width=10,
                       num_time_masks=1, time_warp=0, start_step=2, ramp_steps=3)
        aug = AugmentConfig(vtlp=0.1, tempo=0.1, noise_prob=0.5, babble_prob=0.5)
        return dataclasses.replace(cfg, model=model, specaug=spec, augment=aug)

    args = (tiny_corpus.manifest, dev, tiny_corpus.tokenizer_path)
    full = train(noisy(max_steps=2 * n), *args, tmp_path / "full")
    train(noisy(max_steps=n), *args, tmp_path / "split")
    assert ckpt.load_checkpoint(tmp_path / "split" / "checkpoints" / f"ckpt-{n}.pt")["state"]["batches_in_epoch"] > 0
    resumed = train(noisy(max_steps=2 * n), *args, tmp_path / "split", resume=True)
    a = ckpt.load_checkpoint(full.final_dir / "model.pt")["model"]
    b = ckpt.load_checkpoint(resumed.final_dir / "model.pt")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # and the augmentation was applied: without it the same run ends elsewhere
    cfg = noisy(max_steps=2 * n)
    clean = train(dataclasses.replace(cfg, augment=AugmentConfig()), *args, tmp_path / "clean")
    c = ckpt.load_checkpoint(clean.final_dir / "model.pt")["model"]
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
