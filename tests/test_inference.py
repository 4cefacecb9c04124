"""Inference API: CTC alignment helpers (asr.align), Recognizer batching and nbest, the lazy ``asr`` package."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from asr.align import ctc_forced_align, ctc_greedy, longest_run
from asr.tokenizer import BLANK_ID


def _path_score(log_probs: np.ndarray, tokens: list[int], spans: list[tuple[int, int]]) -> float:
    """Score of the frame labelling implied by ``spans`` (token k on its frames, blank elsewhere)."""
    labels = np.full(log_probs.shape[0], BLANK_ID)
    for tok, (a, b) in zip(tokens, spans):
        labels[a : b + 1] = tok
    return float(log_probs[np.arange(len(labels)), labels].sum())


def _collapse(labels) -> list[int]:
    out, prev = [], None
    for x in labels:
        if x != prev and x != BLANK_ID:
            out.append(int(x))
        prev = x
    return out


@pytest.mark.parametrize("tokens", [[1, 2], [2, 2], [1, 2, 1], [3]])
def test_forced_align_matches_brute_force_best_path(tokens):
    rng = np.random.default_rng(len(tokens) * 7 + tokens[0])
    n_frames, vocab = 6, 4
    log_probs = np.log(rng.dirichlet(np.ones(vocab), size=n_frames))
    best = max(
        float(log_probs[np.arange(n_frames), list(labels)].sum())
        for labels in itertools.product(range(vocab), repeat=n_frames)
        if _collapse(labels) == tokens
    )
    spans = ctc_forced_align(log_probs, tokens)
    assert spans is not None and len(spans) == len(tokens)
    starts = [a for a, _ in spans]
    assert starts == sorted(starts) and all(a <= b for a, b in spans)
    assert all(spans[k][1] < spans[k + 1][0] for k in range(len(spans) - 1))
    assert _path_score(log_probs, tokens, spans) == pytest.approx(best, abs=1e-9)


def test_forced_align_refuses_tokens_that_do_not_fit():
    log_probs = np.log(np.full((3, 4), 0.25))
    assert ctc_forced_align(log_probs, [1, 2, 3]) is not None
    assert ctc_forced_align(log_probs, [1, 2, 3, 1]) is None
    assert ctc_forced_align(log_probs, [2, 2, 2]) is None  # repeats need a blank between them
    assert ctc_forced_align(log_probs, []) == []


def test_forced_align_follows_peaks():
    n_frames, vocab = 20, 5
    log_probs = np.full((n_frames, vocab), np.log(0.01))
    log_probs[:, BLANK_ID] = np.log(0.96)
    for frame, tok in [(3, 4), (9, 3), (15, 4)]:
        log_probs[frame] = np.log(0.01)
        log_probs[frame, tok] = np.log(0.96)
    assert ctc_forced_align(log_probs, [4, 3, 4]) == [(3, 3), (9, 9), (15, 15)]
    assert ctc_greedy(torch.from_numpy(log_probs)[None], torch.tensor([len(log_probs)])) == [[4, 3, 4]]


def test_longest_run_prefers_later_on_ties_and_clips():
    mask = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1, 0], dtype=bool)
    assert longest_run(mask, 0, 10) == (6, 9)
    assert longest_run(mask, 0, 5) == (3, 5)
    assert longest_run(mask, 7, 10) == (7, 9)
    assert longest_run(mask, 2, 3) is None


def test_import_asr_is_light():
    code = (
        "import sys, asr; assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert asr.load_model.__doc__; print(asr.__all__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "load_model" in out.stdout


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir):
    """The tiny model on one torch thread (as ``asr transcribe`` runs), restored afterwards."""
    import torch

    import asr

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield asr.load_model(tiny_model_dir)
    torch.set_num_threads(before)


def _waves(corpus, n):
    from asr.audio import load_audio

    utts = corpus.utts[:n]
    return [load_audio(u.audio) for u in utts], [u.text for u in utts]


def _pad(waves):
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return batch, lengths


def test_decode_batch_padding_and_input_kinds_agree(recognizer, tiny_corpus):
    from asr.decoding import DecodeOptions

    waves, _ = _waves(tiny_corpus, 4)
    options = DecodeOptions(beam_size=1)
    batch, lengths = _pad(waves)
    together = [nb[0].tokens for nb in recognizer.decode_batch(batch, lengths, options)]
    alone = [recognizer.decode_batch(*_pad([w]), options)[0][0].tokens for w in waves]
    assert together == alone
    feats, feat_lengths = recognizer.frontend(batch, lengths)
    assert [nb[0].tokens for nb in recognizer.decode_batch(feats, feat_lengths, options)] == together


def test_decode_batch_recognises_training_utterances(recognizer, tiny_corpus):
    import jiwer

    from asr.decoding import DecodeOptions

    waves, texts = _waves(tiny_corpus, len(tiny_corpus.texts))
    hyps = recognizer.decode_batch(*_pad(waves), DecodeOptions(beam_size=2))
    words = [recognizer.tokenizer.decode(nb[0].tokens) for nb in hyps]
    # A wiring mistake (frontend, CMVN, ids) gives ~100 %; the tiny model itself is not perfect.
    assert jiwer.wer(list(texts), words) <= 0.5


def test_nbest_through_the_python_api(recognizer, tiny_corpus):
    """nbest hypotheses per row, best first, distinct, and the best one is the nbest=1 answer."""
    import asr

    waves, _ = _waves(tiny_corpus, 3)
    batch, lengths = _pad(waves)
    options = asr.DecodeOptions(beam_size=4, nbest=3)
    nbests = recognizer.decode_batch(batch, lengths, options)
    single = recognizer.decode_batch(batch, lengths, asr.DecodeOptions(beam_size=4))
    assert len(nbests) == 3
    for nb, one in zip(nbests, single):
        assert 2 <= len(nb) <= 3 and len(one) == 1
        assert [h.score for h in nb] == sorted((h.score for h in nb), reverse=True)
        assert len({tuple(h.tokens) for h in nb}) == len(nb)
        assert nb[0].tokens == one[0].tokens and nb[0].score == pytest.approx(one[0].score, abs=1e-4)


def test_transcribe_array_returns_segments_with_word_times(recognizer, tiny_corpus):
    import asr
    from asr.transcribe import transcribe

    wave, texts = _waves(tiny_corpus, 1)
    audio = np.concatenate([np.zeros(8000, np.float32), wave[0], np.zeros(8000, np.float32)])
    segments = transcribe(recognizer, audio, asr.DecodeOptions(beam_size=1, ctc_weight=0.0))
    assert segments and all(isinstance(s, asr.Segment) for s in segments)
    seg = segments[0]
    assert 0.2 <= seg.start < seg.end <= len(audio) / 16000 + 1e-6
    assert seg.tokens and seg.avg_logprob <= 0.0
    assert " ".join(w.word for w in seg.words) == seg.text
    times = [t for w in seg.words for t in (w.start, w.end)]
    assert times == sorted(times) and seg.start - 0.05 <= times[0] and times[-1] <= seg.end + 0.05
    # 32 kHz stereo input is mixed down, resampled to the model's rate and recognised the same way.
    from asr.audio import resample

    high = resample(audio, 16000, 32000)
    again = transcribe(recognizer, np.stack([high, high], axis=1), asr.DecodeOptions(beam_size=1, ctc_weight=0.0),
                       sample_rate=32000)
    assert [s.text for s in again] == [s.text for s in segments]


def test_blank_cut_lands_in_silence(recognizer, tiny_corpus):
    from asr.transcribe import blank_cut

    waves, _ = _waves(tiny_corpus, 2)
    gap = np.zeros(16000, np.float32)
    window = np.concatenate([waves[0], gap, waves[1]])
    lo, hi = 0, len(window)
    cut = blank_cut(recognizer, window, lo, hi)
    # The longest blank run is the second of silence between the two words (edges included).
    assert len(waves[0]) - 1600 <= cut <= len(waves[0]) + len(gap) + 1600
