"""Per-speaker mean normalisation (ModelConfig.speaker_cmn): training dataset, backend and `asr decode`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from asr.audio import load_audio
from asr.augment import AugmentConfig, Augmenter
from asr.checkpoint import load_las, save_model_dir
from asr.cli import EXIT_PARTIAL, main
from asr.data.dataset import AsrDataset
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.decoding import DecodeOptions
from asr.features import FeatureConfig
from asr.inference import Recognizer, pad_waves
from asr.model import LAS, ModelConfig

CFG = FeatureConfig(n_mels=40)


def _two_speakers(utts: list[Utterance], n: int = 8) -> list[Utterance]:
    """The first ``n`` utterances, alternately spoken by "a" and "b", and one with no speaker."""
    out = [dataclasses.replace(u, speaker="ab"[i % 2]) for i, u in enumerate(utts[:n])]
    return out + [dataclasses.replace(utts[n], speaker="")]


def test_config_rejects_both_normalisations():
    with pytest.raises(ValueError, match="exclude each other"):
        ModelConfig(vocab_size=10, utterance_cmn=True, speaker_cmn=True)


def test_encode_only_scales_for_a_speaker_cmn_model():
    torch.manual_seed(0)
    plain = LAS(ModelConfig(vocab_size=10, n_mels=CFG.n_mels, listener_hidden=16, decoder_hidden=16,
                            attention_dim=16, embed_dim=8))
    spk = LAS(dataclasses.replace(plain.cfg, speaker_cmn=True))
    spk.load_state_dict(plain.state_dict())
    for m in (plain, spk):
        m.set_cmvn(torch.full((CFG.n_mels,), 3.0), torch.full((CFG.n_mels,), 2.0))
        m.eval()
    feats, lengths = torch.randn(2, 24, CFG.n_mels), torch.tensor([24, 17])
    # The global model subtracts its corpus mean; the speaker model takes inputs already centred.
    torch.testing.assert_close(spk.encode(feats, lengths)[0], plain.encode(feats + 3.0, lengths)[0])


def test_dataset_centres_each_speaker(tiny_corpus):
    utts = _two_speakers(read_manifest(tiny_corpus.manifest))
    raw = AsrDataset(utts, None, CFG)
    ds = AsrDataset(utts, None, CFG, speaker_cmn=True)
    assert set(ds.speaker_means) == {"a", "b"}
    for s in "ab":
        idx = [i for i, u in enumerate(utts) if u.speaker == s]
        frames = torch.cat([ds[i]["feats"] for i in idx])
        torch.testing.assert_close(frames.mean(0), torch.zeros(CFG.n_mels), atol=1e-4, rtol=0)
        # A shift of the speaker's mean, nothing else: the utterances keep their differences.
        torch.testing.assert_close(ds[idx[0]]["feats"], raw[idx[0]]["feats"] - ds.speaker_means[s])
    torch.testing.assert_close(ds[len(utts) - 1]["feats"].mean(0), torch.zeros(CFG.n_mels), atol=1e-4, rtol=0)


def test_augmented_items_keep_their_speaker_normalised_mean(tiny_corpus):
    utts = _two_speakers(read_manifest(tiny_corpus.manifest))
    aug = Augmenter(AugmentConfig(vtlp=0.15, noise_prob=1.0, snr_low=5, snr_high=5), CFG, seed=1)
    ds = AsrDataset(utts, None, CFG, augment=aug, speaker_cmn=True)
    plain = AsrDataset(utts, None, CFG, speaker_cmn=True)
    for i in range(4):
        a, p = ds[(0, i)]["feats"], plain[i]["feats"]
        assert a.shape == p.shape and not torch.allclose(a, p)
        # The warp and the noise move the mean; the correction puts it back where the speaker's own is.
        torch.testing.assert_close(a.mean(0), p.mean(0), atol=1e-4, rtol=0)
    assert torch.equal(ds[(0, 1)]["feats"], ds[(0, 1)]["feats"])  # seeded per (epoch, index)


@pytest.fixture(scope="module")
def speaker_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model re-saved as a speaker_cmn model (same weights): what decoding does with it is testable."""
    model, tok, cfg = load_las(tiny_model_dir)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, speaker_cmn=True))
    spk = LAS(cfg.model)
    spk.load_state_dict(model.state_dict())
    return save_model_dir(tmp_path_factory.mktemp("spk_model"), spk, cfg, tok)


@pytest.mark.slow
def test_backend_subtracts_the_speaker_mean_or_the_utterance_mean(speaker_model_dir, tiny_corpus):
    rec = Recognizer.from_dir(speaker_model_dir)
    be = rec.backend
    assert be.speaker_cmn
    waves = [load_audio(u.audio) for u in tiny_corpus.utts[:3]]
    padded, lengths = pad_waves(waves)
    feats, flen = be.frontend(torch.as_tensor(padded), torch.as_tensor(lengths))
    frames = torch.cat([feats[i, : int(n)] for i, n in enumerate(flen)])
    mean = be.feature_mean(waves)
    np.testing.assert_allclose(mean, frames.mean(0).numpy(), atol=1e-4)
    be.set_speaker_mean(mean)
    enc, _ = be.encode(padded, lengths)
    torch.testing.assert_close(enc, be.model.encode(feats - torch.from_numpy(mean), flen)[0])
    be.set_speaker_mean(None)
    from asr.model import utterance_mean

    enc, _ = be.encode(padded, lengths)
    torch.testing.assert_close(enc, be.model.encode(feats - utterance_mean(feats, flen), flen)[0])


@pytest.mark.slow
def test_decode_normalises_each_speaker_and_survives_a_bad_file(speaker_model_dir, tiny_corpus, tmp_path):
    utts = _two_speakers(read_manifest(tiny_corpus.manifest))
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    utts.insert(2, Utterance("broken", str(bad), 1.0, "YES", "a"))
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, utts)
    # What each hypothesis must be: decoded alone, minus its speaker's mean over the speaker's readable files.
    rec = Recognizer.from_dir(speaker_model_dir)
    expected = {}
    for s in ("a", "b", ""):
        group = [u for u in utts if u.speaker == s and u.id != "broken"]
        waves = [load_audio(u.audio) for u in group]
        rec.backend.set_speaker_mean(rec.backend.feature_mean(waves) if s else None)
        for u, w in zip(group, waves):
            hyp = rec.decode_batch(*pad_waves([w]), DecodeOptions(beam_size=4))[0][0]
            expected[u.id] = rec.tokenizer.decode(hyp.tokens)
    for nj in ("1", "2"):
        out = tmp_path / f"out{nj}"
        status = main(["decode", "--model", str(speaker_model_dir), "--manifest", str(manifest),
                       "--out-dir", str(out), "--beam", "4", "--no-progress", "--nj", nj])
        assert status == EXIT_PARTIAL
        assert (out / "failures.tsv").read_text().startswith("broken\t")
        hyps = [json.loads(line) for line in (out / "hyps.jsonl").read_text().splitlines()]
        assert [h["id"] for h in hyps] == [u.id for u in utts if u.id != "broken"]
        assert {h["id"]: h["text"] for h in hyps} == expected


@pytest.mark.slow
def test_vtln_scores_each_warp_minus_the_mean_under_that_warp(speaker_model_dir, tiny_corpus):
    from asr.vtln import warp_scores

    rec = Recognizer.from_dir(speaker_model_dir)
    be = rec.backend
    waves = [load_audio(u.audio) for u in tiny_corpus.utts[:4]]
    before = be.feature_mean(waves)
    be.set_speaker_mean(before)
    scores = warp_scores(rec, waves, (0.9, 1.0, 1.15))
    # Left as found: warp 1.0 and the caller's speaker mean.
    assert be.warp == 1.0 and torch.equal(be.speaker_mean, torch.as_tensor(before))
    greedy = DecodeOptions(beam_size=1, ctc_weight=0.0)
    for warp in (0.9, 1.15):
        be.set_warp(warp)
        warped_mean = be.feature_mean(waves)
        assert np.abs(warped_mean - before).max() > 1e-3  # the warp moves the mean, so the choice matters
        be.set_speaker_mean(warped_mean)
        hyps = rec.decode_batch(*pad_waves(waves), greedy)
        assert scores[warp] == pytest.approx(np.mean([h[0].log_prob / (len(h[0].tokens) + 1) for h in hyps]))
    be.set_warp(1.0)
