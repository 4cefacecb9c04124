"""Test-time VTLN (asr/vtln.py, `asr decode --vtln`) on the session's really trained tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import decode_with_a_broken_file

from asr.audio import load_audio
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.decode_manifest import _speaker_shards
from asr.inference import Recognizer, pad_waves
from asr.vtln import DEFAULT_GRID, choose_warp, sample_evenly, warp_scores

pytestmark = pytest.mark.slow


def test_sample_evenly():
    assert sample_evenly(list(range(5)), 10) == [0, 1, 2, 3, 4]
    assert sample_evenly(list(range(10)), 4) == [0, 3, 6, 9]
    assert sample_evenly(list(range(10)), 1) == [0]


def test_speaker_shards_keep_speakers_whole_and_balance_duration():
    utts = [Utterance(f"{s}-{i}", "x.wav", d, "", s) for s, n, d in (("a", 4, 3.0), ("b", 2, 2.0), ("c", 3, 1.0))
            for i in range(n)]
    shards = _speaker_shards(utts, 2)
    assert sorted(len(s) for s in shards) == [4, 5]
    for shard in shards:
        speakers = {u.speaker for u in shard}
        assert all(sum(u.speaker == s for u in shard) == sum(u.speaker == s for u in utts) for s in speakers)
    assert {u.speaker for u in shards[0]} == {"a"}  # 12 s alone; b (4 s) and c (3 s) share the other
    assert len(_speaker_shards(utts, 8)) == 3


def test_set_warp_changes_the_features_and_back(tiny_model_dir, tiny_corpus):
    rec = Recognizer.from_dir(tiny_model_dir)
    wave = torch.from_numpy(load_audio(tiny_corpus.utts[0].audio))[None]
    plain, _ = rec.backend.frontend(wave)
    rec.backend.set_warp(1.1)
    warped, _ = rec.backend.frontend(wave)
    assert warped.shape == plain.shape and not torch.allclose(warped, plain)
    rec.backend.set_warp(1.0)
    assert torch.equal(rec.backend.frontend(wave)[0], plain)


def test_choose_warp_takes_the_best_scoring_grid_point(tiny_model_dir, tiny_corpus):
    rec = Recognizer.from_dir(tiny_model_dir)
    waves = [load_audio(u.audio) for u in tiny_corpus.utts[:4]]
    scores = warp_scores(rec, waves)
    assert list(scores) == list(DEFAULT_GRID) and all(np.isfinite(v) and v <= 0 for v in scores.values())
    assert len(set(scores.values())) > 1  # the warp really changes what the model hears
    assert choose_warp(rec, waves) == max(scores, key=scores.get)
    assert rec.backend.warp == 1.0
    # The score at 1.0 is the greedy decode's own: the plain frontend, undisturbed by the search.
    from asr.decoding import DecodeOptions

    hyps = rec.decode_batch(*pad_waves(waves), DecodeOptions(beam_size=1, ctc_weight=0.0))
    assert scores[1.0] == pytest.approx(np.mean([h[0].log_prob / (len(h[0].tokens) + 1) for h in hyps]))


def test_decode_vtln_per_speaker_with_a_bad_file(tiny_model_dir, tiny_corpus, tmp_path):
    utts = read_manifest(tiny_corpus.manifest)[:8]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    utts.insert(2, Utterance("broken", str(bad), 1.0, "YES", utts[0].speaker))
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, utts)
    outs = {}
    for nj in ("1", "2"):
        hyps, info = decode_with_a_broken_file(tiny_model_dir, manifest, tmp_path / f"out{nj}", "--vtln",
                                               "--vtln-utts", "3", "--nj", nj)
        assert [h["id"] for h in hyps] == [u.id for u in utts if u.id != "broken"]
        warps = info["vtln_warps"]
        assert set(warps) == {u.speaker for u in utts}
        assert all(h["warp"] == warps[h["speaker"]] and h["warp"] in DEFAULT_GRID for h in hyps)
        outs[nj] = [(h["id"], h["text"], h["warp"]) for h in hyps]
    assert outs["1"] == outs["2"]  # whole speakers per job: the same warps and words
