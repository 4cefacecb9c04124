"""Unsupervised speaker adaptation (asr/adapt.py, `asr decode --adapt`) on the session's really trained tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest import decode_with_a_broken_file

from asr.adapt import AdaptConfig, FeatureTransform, fit_transform, most_confident
from asr.audio import load_audio
from asr.cli import EXIT_USER_ERROR, main
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.decoding import DecodeOptions
from asr.inference import Recognizer, pad_waves

pytestmark = pytest.mark.slow


def _loss(model, feats, targets, transform=None):
    from asr.adapt import _batch

    x, lengths, y, y_lengths = _batch(feats, targets, list(range(len(feats))), torch.device("cpu"))
    with torch.no_grad():
        if transform is None:
            return float(model(x, lengths, y, y_lengths).loss)
        with transform.applied(model):
            return float(model(x, lengths, y, y_lengths).loss)


def test_fit_transform_undoes_a_channel_mismatch_and_leaves_the_model_alone(tiny_model_dir, tiny_corpus):
    rec = Recognizer.from_dir(tiny_model_dir)
    model = rec.backend.model
    utts = tiny_corpus.utts[:8]
    feats = rec.backend.model_inputs([load_audio(u.audio) for u in utts])
    targets = [rec.tokenizer.encode(u.text) for u in utts]
    # A voice the model never heard, crudely: every mel band scaled and tilted.
    tilt = torch.linspace(-2.0, 2.0, feats[0].size(-1))
    heard = [f * 0.8 + tilt for f in feats]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit_transform(model, heard, targets, AdaptConfig(epochs=60, lr=0.01, batch_utts=4))
    assert result.num_utts == 8
    assert result.last_loss < 0.5 * result.first_loss
    # Measured: 5.9 mismatched, 0.83 adapted, 0.49 on the clean features.
    assert _loss(model, heard, targets, result.transform) < 0.25 * _loss(model, heard, targets)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    assert not result.transform.matrix.requires_grad and result.transform.matrix.abs().sum() > 0


def test_fit_transform_is_seeded_and_skips_empty_hypotheses(tiny_model_dir, tiny_corpus):
    rec = Recognizer.from_dir(tiny_model_dir)
    utts = tiny_corpus.utts[:5]
    feats = rec.backend.model_inputs([load_audio(u.audio) for u in utts])
    targets = [rec.tokenizer.encode(u.text) for u in utts]
    targets[1] = []
    cfg = AdaptConfig(epochs=2, batch_utts=2)
    a, b = (fit_transform(rec.backend.model, feats, targets, cfg) for _ in range(2))
    assert a.num_utts == 4
    assert torch.equal(a.transform.matrix, b.transform.matrix) and torch.equal(a.transform.bias, b.transform.bias)
    with pytest.raises(ValueError, match="no non-empty hypotheses"):
        fit_transform(rec.backend.model, feats[:2], [[], []], cfg)
    with pytest.raises(ValueError):
        AdaptConfig(epochs=0)


def test_entropy_term_makes_the_model_surer_of_the_unlabelled_utterances(tiny_model_dir, tiny_corpus):
    from asr.adapt import _ctc_entropy

    rec = Recognizer.from_dir(tiny_model_dir)
    model = rec.backend.model
    feats = rec.backend.model_inputs([load_audio(u.audio) for u in tiny_corpus.utts[:8]])
    # A mismatched channel, as above: the model is unsure of these.
    tilt = torch.linspace(-2.0, 2.0, feats[0].size(-1))
    heard = [f * 0.8 + tilt for f in feats]
    labelled, unlabelled = heard[:2], heard[2:]
    targets = [rec.tokenizer.encode(u.text) for u in tiny_corpus.utts[:2]]
    # 40 steps: with 10 the gap depended on the machine's tiny model (0.078 against 0.154 on one, 0.172
    # against 0.189 on another), since each step sees only 2 of the 6 unlabelled utterances.
    cfg = AdaptConfig(epochs=40, lr=0.01, batch_utts=2, entropy_weight=300.0)
    with_entropy = fit_transform(model, labelled, targets, cfg, unlabelled)
    without = fit_transform(model, labelled, targets, AdaptConfig(epochs=40, lr=0.01, batch_utts=2,
                                                                  entropy_weight=0.0), unlabelled)
    alone = fit_transform(model, labelled, targets, AdaptConfig(epochs=40, lr=0.01, batch_utts=2,
                                                                entropy_weight=0.0))
    assert torch.equal(without.transform.matrix, alone.transform.matrix)  # weight 0: unlabelled unused

    def entropy(transform):
        with torch.no_grad(), transform.applied(model):
            return float(_ctc_entropy(model, unlabelled, range(len(unlabelled)), torch.device("cpu")))

    # Measured: 0.031 against 0.176 without the term (0.31 before any fit).
    assert entropy(with_entropy.transform) < 0.5 * entropy(without.transform)
    with pytest.raises(ValueError, match="entropy_weight"):
        AdaptConfig(entropy_weight=-1.0)


def test_backend_applies_the_transform_after_normalisation(tiny_model_dir, tiny_corpus):
    # The tiny model normalises with global CMVN, (x - mean) * istd: a shift b of what its listener reads
    # is a shift b / istd of the log-mel.
    rec = Recognizer.from_dir(tiny_model_dir)
    be = rec.backend
    waves = [load_audio(u.audio) for u in tiny_corpus.utts[:3]]
    padded, lengths = pad_waves(waves)
    plain, _ = be.encode(padded, lengths)
    n = be.model.cfg.n_mels
    be.set_feature_transform(FeatureTransform(torch.zeros(n, n), torch.zeros(n)))
    torch.testing.assert_close(be.encode(padded, lengths)[0], plain)
    be.set_feature_transform(FeatureTransform(torch.zeros(n, n), torch.full((n,), 0.5)))
    shifted, _ = be.encode(padded, lengths)
    feats, flen = be.frontend(torch.from_numpy(padded), torch.from_numpy(lengths))
    assert not be.model.cfg.speaker_cmn and not be.model.cfg.utterance_cmn
    torch.testing.assert_close(shifted, be.model.encode(feats + 0.5 / be.model.cmvn_istd, flen)[0])
    assert not torch.allclose(shifted, be.model.encode(feats + 0.5, flen)[0])
    assert not torch.allclose(shifted, plain)
    be.set_feature_transform(None)
    torch.testing.assert_close(be.encode(padded, lengths)[0], plain)


def test_decode_adapt_is_a_second_pass_through_the_fitted_transform(tiny_model_dir, tiny_corpus, tmp_path):
    utts = read_manifest(tiny_corpus.manifest)[:8]
    for i, u in enumerate(utts):
        utts[i] = Utterance(u.id, u.audio, u.duration, u.text, "a" if i % 2 else "b")
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    utts.insert(2, Utterance("broken", str(bad), 1.0, "YES", "a"))
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, utts)
    cfg = AdaptConfig(epochs=2)
    options = DecodeOptions(beam_size=4)
    # What each hypothesis must be: the most confident of the first pass's hypotheses of its speaker fit a
    # transform, the rest of its utterances lower their CTC entropy, and the utterance is decoded through it.
    rec = Recognizer.from_dir(tiny_model_dir)
    expected = {}
    for s in ("b", "a"):
        group = [u for u in utts if u.speaker == s and u.id != "broken"]
        waves = [load_audio(u.audio) for u in group]
        first = [rec.decode_batch(*pad_waves([w]), options)[0][0] for w in waves]
        results = [{"i": i, "tokens": h.tokens, "log_prob": round(h.log_prob, 4)} for i, h in enumerate(first)]
        keep = [r["i"] for r in most_confident([r for r in results if r["tokens"]], cfg.keep_fraction)]
        assert 0 < len(keep) < len(group)
        rest = rec.backend.model_inputs([w for i, w in enumerate(waves) if i not in keep])
        fitted = fit_transform(rec.backend.model, rec.backend.model_inputs([waves[i] for i in keep]),
                               [first[i].tokens for i in keep], cfg, rest)
        rec.backend.set_feature_transform(fitted.transform)
        for u, w in zip(group, waves):
            expected[u.id] = rec.tokenizer.decode(rec.decode_batch(*pad_waves([w]), options)[0][0].tokens)
        rec.backend.set_feature_transform(None)
    texts = {}
    for nj in ("1", "2"):
        # The broken file is listed once, not once per pass.
        hyps, info = decode_with_a_broken_file(tiny_model_dir, manifest, tmp_path / f"out{nj}", "--adapt",
                                               "-o", "adapt.epochs=2", "--nj", nj)
        assert [h["id"] for h in hyps] == [u.id for u in utts if u.id != "broken"]
        assert info["run"]["adapt"]["epochs"] == 2 and set(info["adapt_losses"]) == {"a", "b"}
        assert all(len(h["adapt_loss"]) == 2 and h["speaker"] in "ab" for h in hyps)
        texts[nj] = {h["id"]: h["text"] for h in hyps}
    assert texts["1"] == expected
    assert texts["2"] == texts["1"]  # whole speakers per job


def test_adapt_options_need_adapt_and_known_keys(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    base = ["decode", "--model", str(tiny_model_dir), "--manifest", str(tiny_corpus.manifest),
            "--out-dir", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["-o", "adapt.epochs=2"]) == EXIT_USER_ERROR
    assert "adapt options need --adapt" in capsys.readouterr().err
    assert main(base + ["--adapt", "-o", "adapt.bogus=1"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert "unknown key 'bogus'" in err and len(err.splitlines()) == 1
    assert main(base + ["--adapt", "-o", "adapt.epochs=0"]) == EXIT_USER_ERROR
    assert "epochs" in capsys.readouterr().err


def test_most_confident_keeps_the_best_per_token_hypotheses_in_order():
    results = [{"id": "a", "tokens": [1, 2, 3], "log_prob": -8.0},  # -2 per token (and EOS)
               {"id": "b", "tokens": [1], "log_prob": -0.2},  # -0.1
               {"id": "c", "tokens": [4, 5, 6], "log_prob": -2.0},  # -0.5
               {"id": "d", "tokens": [7], "log_prob": -3.0}]  # -1.5
    assert [r["id"] for r in most_confident(results, 0.5)] == ["b", "c"]
    assert [r["id"] for r in most_confident(results, 0.1)] == ["b"]
    assert most_confident(results, 1.0) == results and most_confident([], 0.5) == []


def test_most_confident_keeps_every_repeated_hypothesis():
    # Four utterances heard as ONE, all more confident than the two heard as TWO.
    results = [{"id": f"one{i}", "tokens": [1], "log_prob": -0.1 * (i + 1)} for i in range(4)]
    results += [{"id": f"two{i}", "tokens": [2], "log_prob": -2.0 - i} for i in range(2)]
    results += [{"id": "u1", "tokens": [3, 4], "log_prob": -0.3}, {"id": "u2", "tokens": [5, 6], "log_prob": -9.0}]
    assert [r["id"] for r in most_confident(results, 0.5)] == ["one0", "one1", "two0", "u1"]
    with pytest.raises(ValueError):
        AdaptConfig(keep_fraction=0.0)
