"""Test-time vocal-tract-length normalisation (VTLN): per speaker, the filterbank warp the model likes best.

Training with VTLP (``augment.vtlp``) shows the model the same speech through filterbanks warped by
factors around 1. At test time the classic counterpart (Lee and Rose, 1996) picks, for each speaker, the
warp under which the model finds that speaker's speech most likely, and decodes all of the speaker's
utterances with it. No transcript is used: the criterion is the greedy hypothesis's mean log-probability
per output token, averaged over a sample of the speaker's utterances. An unseen voice whose formants sit
higher or lower than the training voices' is moved towards them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from asr.decoding import DecodeOptions
from asr.inference import pad_waves

# Warp factors tried: the training VTLP range (U[0.85, 1.15] in the mini recipe) and one step beyond.
DEFAULT_GRID = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2)


def sample_evenly(items: Sequence, n: int) -> list:
    """At most ``n`` items spread evenly over ``items`` (all of them when there are at most ``n``)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else [items[0]]


def warp_scores(rec: Any, waves: Sequence[np.ndarray], grid: Sequence[float] = DEFAULT_GRID) -> dict[float, float]:
    """Mean per-token log-probability of the greedy hypotheses of ``waves`` under each warp of ``grid``.

    rec: an :class:`asr.inference.Recognizer` with a torch backend; waves: (samples,) float32 arrays at
    ``rec.sample_rate``. The backend's warp is left at 1.0 afterwards, and its speaker mean as it was.
    A speaker-CMN model (``ModelConfig.speaker_cmn``) is scored minus the mean log-mel of ``waves`` under
    each warp: a mean taken at 1.0 would not match the warped features, and every warp but 1.0 would
    lose for that mismatch alone (measured: it chose 0.95 for the mini recipe's unseen voice, and 1.10
    without speaker CMN).
    """
    if not hasattr(rec.backend, "set_warp"):
        from asr.errors import ConfigError

        raise ConfigError("--vtln", "needs the torch backend (an exported model's filterbank is fixed)")
    # The speller's log-probability where there is one; a CTC-only model is scored by its CTC path.
    speller = rec.has_speller
    greedy = DecodeOptions(beam_size=1, ctc_weight=0.0 if speller else 1.0)
    padded, lengths = pad_waves(waves)
    speaker_cmn = getattr(rec.backend, "speaker_cmn", False)
    previous_mean = getattr(rec.backend, "speaker_mean", None)
    scores = {}
    try:
        for warp in grid:
            rec.backend.set_warp(warp)
            if speaker_cmn:
                rec.backend.set_speaker_mean(rec.backend.feature_mean(list(waves)))
            hyps = rec.decode_batch(padded, lengths, greedy)
            scores[warp] = float(np.mean([(h[0].log_prob if speller else h[0].ctc_score) / (len(h[0].tokens) + 1)
                                          for h in hyps]))
    finally:
        rec.backend.set_warp(1.0)
        if speaker_cmn:
            rec.backend.set_speaker_mean(previous_mean)
    return scores


def choose_warp(rec: Any, waves: Sequence[np.ndarray], grid: Sequence[float] = DEFAULT_GRID) -> float:
    """The warp of ``grid`` with the best :func:`warp_scores` (ties: the one nearest 1.0)."""
    scores = warp_scores(rec, waves, grid)
    return max(scores, key=lambda w: (scores[w], -abs(w - 1.0)))
