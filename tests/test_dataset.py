"""AsrDataset, collate, make_loader and filter_utterances on tiny generated audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data.dataset import (
    AsrDataset,
    Batch,
    collate,
    ctc_min_frames,
    filter_utterances,
    make_loader,
)
from asr.data.featstage import FeatStageConfig, run_feature_stage
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.data.sampler import DynamicBucketSampler
from asr.errors import DataError
from asr.features import FeatureConfig, log_mel, num_frames
from asr.tokenizer import IGNORE_ID, Tokenizer

CFG = FeatureConfig(n_mels=40)
TEXTS = ["ONE TWO THREE", "FOUR", "FIVE SIX SEVEN EIGHT", "NINE ZERO", "TWO TWO", "SEVEN ONE FOUR"]


def _wave(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six utterances: 16 kHz mono, one 8 kHz stereo file, one segment at an offset of a longer file."""
    d = tmp_path_factory.mktemp("corpus")
    utts = []
    for i, text in enumerate(TEXTS):
        secs = 0.4 + 0.15 * i
        if i == 1:
            sf.write(d / "u1.wav", np.stack([_wave(secs, 8000, i), _wave(secs, 8000, i + 9)], 1), 8000)
        elif i == 3:
            sf.write(d / "u3.wav", _wave(2.0, 16000, i), 16000)
            utts.append(Utterance("u3", str(d / "u3.wav"), secs, text, "spk1", offset=0.7))
            continue
        else:
            sf.write(d / f"u{i}.wav", _wave(secs, 16000, i), 16000)
        utts.append(Utterance(f"u{i}", str(d / f"u{i}.wav"), secs, text, f"spk{i % 2}"))
    write_manifest(d / "train.jsonl", utts)
    tok = Tokenizer.train(TEXTS * 5, d / "tok", vocab_size=30, model_type="unigram")
    return d, read_manifest(d / "train.jsonl"), tok


@pytest.fixture(scope="module")
def cached_utts(corpus):
    d, _, _ = corpus
    result = run_feature_stage(d / "train.jsonl", d / "feats", CFG, FeatStageConfig(nj=1, shard_size=4, progress=False))
    return read_manifest(result.manifest)


def test_items_hold_log_mel_of_the_audio_and_the_tokens(corpus):
    d, utts, tok = corpus
    ds = AsrDataset(utts, tok, CFG)
    assert len(ds) == len(utts)
    for i, u in enumerate(utts):
        item = ds[i]
        samples = int(round(u.duration * CFG.sample_rate))
        assert item["feats"].dtype == torch.float32
        assert abs(item["feats"].shape[0] - num_frames(samples, CFG)) <= 1
        assert item["feats"].shape[1] == CFG.n_mels
        assert item["tokens"] == tok.encode(u.text) and item["text"] == u.text and item["id"] == u.id
    # The offset segment is the window of the file, not its start.
    wave, _ = sf.read(d / "u3.wav", dtype="float32")
    start = int(0.7 * 16000)
    expected = log_mel(wave[start : start + int(round(utts[3].duration * 16000))], CFG)
    np.testing.assert_allclose(ds[3]["feats"].numpy(), expected, atol=1e-4)


def test_cached_features_equal_on_the_fly_features(cached_utts):
    audio = AsrDataset(cached_utts, None, CFG, source="audio")
    cached = AsrDataset(cached_utts, None, CFG, source="cached")
    assert len({u.extra["feats"].rsplit(":", 2)[0] for u in cached_utts}) == 2  # two shards
    for i in range(len(cached_utts)):
        assert torch.equal(audio[i]["feats"], cached[i]["feats"]), cached_utts[i].id


def test_cached_source_refuses_missing_entries_and_other_feature_settings(corpus, cached_utts):
    _, utts, _ = corpus
    with pytest.raises(DataError, match="no 'feats' entry"):
        AsrDataset(utts, None, CFG, source="cached")
    with pytest.raises(DataError, match="other feature settings .fmax"):
        AsrDataset(cached_utts, None, FeatureConfig(n_mels=40, fmax=7000.0), source="cached")
    with pytest.raises(DataError, match=r"\(rows, 80\)"):
        AsrDataset(cached_utts, None, FeatureConfig(), source="cached")


def test_collate_pads_features_with_zeros_and_targets_with_ignore_id(corpus):
    _, utts, tok = corpus
    ds = AsrDataset(utts, tok, CFG)
    items = [ds[i] for i in (0, 2, 4)]
    batch = collate(items)
    lengths = [it["feats"].shape[0] for it in items]
    assert batch.feats.shape == (3, max(lengths), CFG.n_mels)
    assert batch.feat_lengths.tolist() == lengths and batch.feat_lengths.dtype == torch.long
    assert batch.targets.shape == (3, max(len(it["tokens"]) for it in items))
    for b, it in enumerate(items):
        n, u = lengths[b], len(it["tokens"])
        assert torch.equal(batch.feats[b, :n], it["feats"])
        assert not batch.feats[b, n:].any()
        assert batch.targets[b, :u].tolist() == it["tokens"]
        assert (batch.targets[b, u:] == IGNORE_ID).all()
        assert batch.target_lengths[b] == u
    assert batch.ids == [it["id"] for it in items] and batch.speakers == [it["speaker"] for it in items]
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.feats, batch.feats)


def test_bad_audio_is_dropped_and_reported_not_raised(corpus, tmp_path):
    _, utts, tok = corpus
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    bad = [Utterance("broken", str(tmp_path / "broken.wav"), 1.0, "ONE"),
           Utterance("gone", str(tmp_path / "missing.wav"), 1.0, "TWO")]
    ds = AsrDataset([utts[0], *bad], tok, CFG)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch.ids == ["u0"] and len(batch) == 1
    assert [i for i, _ in batch.failed] == ["broken", "gone"]
    assert "missing.wav" in batch.failed[1][1]
    empty = collate([ds[1]])
    assert len(empty) == 0 and empty.feats.shape[0] == 0 and empty.failed


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_every_utterance_once_per_epoch(corpus, tmp_path, workers):
    _, utts, tok = corpus
    bad = Utterance("gone", str(tmp_path / "missing.wav"), 0.5, "TWO")
    ds = AsrDataset([*utts, bad], tok, CFG)
    sampler = DynamicBucketSampler([u.duration for u in ds.utts], max_duration=1.5, seed=3)
    loader = make_loader(ds, sampler, num_workers=workers)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(sampler)
        ids = [i for b in batches for i in b.ids]
        assert sorted(ids) == sorted(u.id for u in utts)
        assert [f[0] for b in batches for f in b.failed] == ["gone"]
        for b in batches:
            assert b.feats.shape[0] == len(b.ids) and b.feat_lengths.max() == b.feats.shape[1]


def test_filter_utterances_reports_each_reason(corpus):
    _, utts, tok = corpus
    long_text = " ".join(["SEVEN"] * 20)
    need = ctc_min_frames(tok.encode(long_text))
    dense_seconds = 3 * need * CFG.hop_length / CFG.sample_rate  # 3x the frames needed: fits only unreduced
    cases = [
        Utterance("ok", "x.wav", 2.0, "ONE TWO"),
        Utterance("long", "x.wav", 30.0, "ONE"),
        Utterance("short", "x.wav", 0.05, "ONE"),
        Utterance("dense", "x.wav", dense_seconds, long_text),
    ]
    kept, rejected = filter_utterances(cases, max_seconds=20.0, tokenizer=tok, min_seconds=0.1,
                                       feature_cfg=CFG, subsampling=8)
    assert [u.id for u in kept] == ["ok"]
    reasons = dict(rejected)
    assert set(reasons) == {"long", "short", "dense"}
    assert "too long" in reasons["long"] and "too short" in reasons["short"]
    assert "CTC" in reasons["dense"]
    # Without subsampling the same utterance fits; a token cap rejects it instead.
    kept, rejected = filter_utterances(cases[3:], 20.0, tok, max_tokens=10, feature_cfg=CFG)
    assert not kept and "too many tokens" in rejected[0][1]
    assert filter_utterances(cases[3:], 20.0, tok, feature_cfg=CFG)[0] == cases[3:]


def test_ctc_min_frames_counts_blanks_between_repeats():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([5, 6, 7]) == 3
    assert ctc_min_frames([5, 5, 5, 6]) == 6


def test_feature_config_file_is_written_beside_shards(cached_utts):
    shard = cached_utts[0].extra["feats"].rsplit(":", 2)[0]
    from pathlib import Path

    saved = json.loads((Path(shard).parent / "feature_config.json").read_text())
    assert saved["n_mels"] == CFG.n_mels


def test_loader_resumes_mid_epoch_despite_prefetching(cached_utts):
    ds = AsrDataset(cached_utts * 4, None, CFG, source="cached")  # repeated ids are fine here

    def loader_and_sampler():
        sampler = DynamicBucketSampler(ds.durations, max_duration=1.2, seed=11)
        return make_loader(ds, sampler, num_workers=2, prefetch_factor=2), sampler

    loader, sampler = loader_and_sampler()
    sampler.set_epoch(1)
    full = [b.ids for b in loader]
    assert len(full) >= 4
    sampler.set_epoch(1)
    it = iter(loader)
    consumed = [next(it).ids for _ in range(2)]  # the workers have prefetched more than this
    state = sampler.state_dict(len(consumed))
    del it, loader

    loader, sampler = loader_and_sampler()
    sampler.load_state_dict(state)
    sampler.set_epoch(1)
    assert consumed + [b.ids for b in loader] == full
