"""Confidence: speller token posteriors, CTC posteriors over the alignment, word/segment aggregation, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from asr.align import ctc_token_posteriors, segment_confidence, word_confidence


def test_aggregation():
    assert word_confidence(np.array([0.9, 0.5, 0.8])) == 0.5
    assert segment_confidence(np.array([0.25, 1.0])) == pytest.approx(0.5)
    assert word_confidence(np.array([])) == 0.0 and segment_confidence(np.array([])) == 0.0


def test_ctc_token_posteriors_average_over_aligned_frames():
    # Frames: token 1 (p .9, .7), blank, token 2 (p .6); V = 4, blank = 0.
    probs = np.full((4, 4), 0.01)
    probs[0, 1], probs[1, 1], probs[2, 0], probs[3, 2] = 0.9, 0.7, 0.97, 0.6
    probs /= probs.sum(1, keepdims=True)
    conf = ctc_token_posteriors(np.log(probs), [1, 2])
    assert conf == pytest.approx([(probs[0, 1] + probs[1, 1]) / 2, probs[3, 2]], abs=1e-6)
    assert ctc_token_posteriors(np.log(probs[:1]), [1, 2]).tolist() == [0.0, 0.0]  # does not fit


@pytest.fixture(scope="module")
def rec(tiny_model_dir):
    import asr

    return asr.load_model(tiny_model_dir)


def test_speller_confidences_are_the_search_posteriors(rec, tiny_corpus):
    """The teacher-forced pass gives the probabilities the greedy search saw: their logs sum to its log_prob."""
    from asr.audio import load_audio
    from asr.decoding import DecodeOptions

    waves = [torch.from_numpy(load_audio(u.audio, rec.sample_rate)) for u in tiny_corpus.utts[:4]]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    enc, enc_lengths = rec.encode(batch, lengths)
    hyps = [n[0] for n in rec.decode(enc, enc_lengths, DecodeOptions(beam_size=1, ctc_weight=0.0))]
    probs = rec.token_confidences(enc, enc_lengths, [h.tokens for h in hyps])
    for h, p in zip(hyps, probs):
        assert p.shape == (len(h.tokens) + 1,) and np.all((p > 0) & (p <= 1))
        assert float(np.log(p).sum()) == pytest.approx(h.log_prob, abs=1e-3)


def test_confidence_in_segments_json_and_tsv(rec, tiny_model_dir, tiny_corpus, tmp_path):
    from asr.cli import main
    from asr.transcribe import transcribe

    utt = tiny_corpus.utts[0]
    segs = transcribe(rec, utt.audio)
    assert segs and all(0 < s.confidence <= 1 for s in segs)
    words = [w for s in segs for w in s.words]
    assert words and all(0 < w.confidence <= 1 for w in words)
    assert " ".join(w.word for w in segs[0].words) == segs[0].text
    assert main(["transcribe", "--model", str(tiny_model_dir), utt.audio, "--format", "json,tsv",
                 "--output-dir", str(tmp_path), "--quiet"]) == 0
    stem = tmp_path / utt.audio.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    doc = json.loads(stem.with_suffix(".json").read_text())
    seg = doc["segments"][0]
    assert seg["confidence"] == pytest.approx(segs[0].confidence)
    assert [w["confidence"] for w in seg["words"]] == [w.confidence for w in segs[0].words]
    rows = [r.split("\t") for r in stem.with_suffix(".tsv").read_text().splitlines()]
    assert rows[0] == ["start", "end", "text", "confidence"]
    assert float(rows[1][3]) == pytest.approx(segs[0].confidence, abs=1e-4)


def test_low_confidence_on_a_wrong_forced_hypothesis(rec, tiny_corpus):
    """The speller is far less sure of a transcript that is not what was said."""
    from asr.audio import load_audio

    u, other = tiny_corpus.utts[0], next(v for v in tiny_corpus.utts if v.text != tiny_corpus.utts[0].text)
    wave = torch.from_numpy(load_audio(u.audio, rec.sample_rate))[None]
    enc, lens = rec.encode(wave, torch.tensor([wave.size(1)]))
    right = rec.token_confidences(enc, lens, [rec.tokenizer.encode(u.text)])[0]
    wrong = rec.token_confidences(enc, lens, [rec.tokenizer.encode(other.text)])[0]
    assert segment_confidence(right) > segment_confidence(wrong)
