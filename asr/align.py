"""CTC alignment helpers: best-path output, forced alignment, word times and blank runs.

Everything here reads CTC log-posteriors only; nothing runs the model. The long-form transcriber uses
these for word times and for choosing where to cut, the search for the best path of a pure-CTC model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from asr.backends import as_array
from asr.tokenizer import BLANK_ID

if TYPE_CHECKING:
    from asr.tokenizer import Tokenizer

WORD_BOUNDARY = "\u2581"  # sentencepiece marks the first piece of a word with it


def ctc_greedy(log_probs: Any, lengths: Any) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    log_probs: (B, T', V) array or tensor; lengths: (B,) valid frames. Returns token ids per utterance.
    """
    best = as_array(log_probs).argmax(axis=-1)
    lengths = as_array(lengths, np.int64)
    out = []
    for b in range(best.shape[0]):
        path = best[b, : int(lengths[b])]
        keep = np.ones(path.shape, dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        out.append([int(t) for t in path[keep] if t != BLANK_ID])
    return out


def longest_run(mask: np.ndarray, lo: int, hi: int) -> tuple[int, int] | None:
    """Longest run of True in ``mask[lo:hi]`` as ``(start, end)`` (end exclusive); the later one on ties."""
    lo, hi = max(lo, 0), min(hi, len(mask))
    best, start = None, None
    for i in range(lo, hi + 1):
        on = i < hi and bool(mask[i])
        if on and start is None:
            start = i
        elif not on and start is not None:
            if best is None or i - start >= best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def ctc_forced_align(log_probs: np.ndarray, tokens: list[int]) -> list[tuple[int, int]] | None:
    """Viterbi alignment of ``tokens`` to CTC posteriors log_probs (T, V).

    Returns one ``(first_frame, last_frame)`` span (inclusive) per token, or None when the tokens cannot
    fit into T frames (each token needs a frame, and a repeated token a blank between).
    """
    n_tok = len(tokens)
    if n_tok == 0:
        return []
    repeats = sum(a == b for a, b in zip(tokens, tokens[1:]))
    n_frames = log_probs.shape[0]
    if n_frames < n_tok + repeats:
        return None
    states = np.full(2 * n_tok + 1, BLANK_ID)
    states[1::2] = tokens
    emit = log_probs[:, states].astype(np.float64)  # (T, S)
    # A token may be entered from the token before it (skipping the blank) unless both are equal.
    skip = np.zeros(len(states), dtype=bool)
    skip[3::2] = states[3::2] != states[1:-2:2]
    score = np.full(len(states), -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((n_frames, len(states)), dtype=np.int8)
    for t in range(1, n_frames):
        from_prev = np.concatenate([[-np.inf], score[:-1]])
        from_skip = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        cand = np.stack([score, from_prev, from_skip])
        back[t] = cand.argmax(0)
        score = cand[back[t], np.arange(len(states))] + emit[t]
    s = len(states) - 1 if len(states) == 1 or score[-1] >= score[-2] else len(states) - 2
    spans: list[list[int]] = [[-1, -1] for _ in tokens]
    for t in range(n_frames - 1, -1, -1):
        if s % 2 == 1:
            k = (s - 1) // 2
            spans[k][0] = t
            if spans[k][1] < 0:
                spans[k][1] = t
        s -= int(back[t, s])
    return [(a, b) for a, b in spans]


def word_alignment(
    log_probs: np.ndarray, tokens: list[int], tokenizer: Tokenizer, frame_seconds: float, offset: float = 0.0
) -> list[tuple[str, float, float, list[int]]]:
    """Group tokens into words and time them from the CTC alignment.

    Args:
        log_probs: (T, V) CTC log-probabilities of one segment.
        tokens: output token ids of the segment.
        frame_seconds: seconds per encoder frame; offset: segment start in seconds.
    Returns:
        ``[(word, start, end, word_tokens)]``; empty when the tokens do not fit the frames.
    """
    spans = ctc_forced_align(log_probs, tokens)
    if not spans:
        return []
    words = [_word(group, tokens, spans, tokenizer, frame_seconds, offset) for group in word_groups(tokens, tokenizer)]
    return [w for w in words if w[0]]


def word_groups(tokens: list[int], tokenizer: Tokenizer) -> list[list[int]]:
    """Positions of the tokens of each word: a word starts at a piece marked with the word boundary."""
    groups: list[list[int]] = []
    for i, tok in enumerate(tokens):
        if not groups or tokenizer.id_to_piece(tok).startswith(WORD_BOUNDARY):
            groups.append([])
        groups[-1].append(i)
    return groups


def _word(group, tokens, spans, tokenizer, frame_seconds, offset):
    ids = [tokens[i] for i in group]
    start = offset + spans[group[0]][0] * frame_seconds
    end = offset + (spans[group[-1]][1] + 1) * frame_seconds
    return tokenizer.decode(ids).strip(), start, end, ids


def ctc_token_posteriors(log_probs: np.ndarray, tokens: list[int]) -> np.ndarray:
    """Confidence of each token from CTC: its mean posterior over the frames its forced alignment spans.

    log_probs: (T, V) of one segment. Returns (len(tokens),) probabilities; zeros when the tokens do not
    fit the frames.
    """
    spans = ctc_forced_align(log_probs, tokens)
    if spans is None:
        return np.zeros(len(tokens))
    return np.array([float(np.exp(log_probs[a : b + 1, tok].astype(np.float64)).mean())
                     for tok, (a, b) in zip(tokens, spans)])


def word_confidence(token_probs: np.ndarray) -> float:
    """A word is as sure as its least sure piece: the minimum of its tokens' probabilities."""
    return float(np.min(token_probs)) if len(token_probs) else 0.0


def segment_confidence(token_probs: np.ndarray) -> float:
    """Geometric mean of the probabilities of a segment's tokens (EOS included when given)."""
    p = np.clip(np.asarray(token_probs, dtype=np.float64), 1e-12, 1.0)
    return float(np.exp(np.log(p).mean())) if p.size else 0.0
