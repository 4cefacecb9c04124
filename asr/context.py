"""Hotwords: contextual biasing of the beam search through a prefix trie over tokenizer pieces.

A :class:`ContextGraph` holds the pieces of each phrase in a trie. A hypothesis carries a trie node as
its context state; every token that continues a phrase adds the phrase's weight to its score, and a
token that breaks a partial match takes back all that the partial match had added (as WeNet's context
graph backs off to its start state), then may start a phrase afresh. A completed phrase keeps its
bonus and returns the state to the root, so a phrase can follow another. EOS in the middle of a match
withdraws it too, so a finished hypothesis is never richer for a phrase it did not finish.

The graph is compiled into two dense tables over (node, token), ``next_state`` and ``delta``, so the
search applies it to all rows and the whole vocabulary with one gather per step; a search without
hotwords never touches it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asr.errors import ConfigError

if TYPE_CHECKING:
    from asr.tokenizer import Tokenizer

ROOT = 0
DEFAULT_WEIGHT = 1.5  # bonus per matched piece, in log-probability units (sherpa-onnx's default too)
_WEIGHT = re.compile(r"^(?P<phrase>.*?)(?:\s*(?:\t|\s:)\s*(?P<weight>[-+0-9.eE]+))?\s*$")


@dataclass(frozen=True)
class Hotword:
    """A phrase to boost and its bonus per piece."""

    phrase: str
    weight: float = DEFAULT_WEIGHT


def parse_hotwords(text: str, source: str = "hotwords", default_weight: float = DEFAULT_WEIGHT) -> list[Hotword]:
    """Lines ``PHRASE``, ``PHRASE :WEIGHT`` or ``PHRASE<TAB>WEIGHT``; blank lines and ``#`` comments skipped.

    Raises ConfigError naming ``source`` and the line for a bad weight.
    """
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _WEIGHT.match(line)
        phrase, weight = m.group("phrase").strip(), m.group("weight")
        try:
            w = default_weight if weight is None else float(weight)
        except ValueError:
            raise ConfigError(f"{source}:{n}", f"bad weight {weight!r}") from None
        if not phrase:
            raise ConfigError(f"{source}:{n}", "a weight without a phrase")
        if w <= 0:
            raise ConfigError(f"{source}:{n}", f"weight must be positive, got {w}")
        out.append(Hotword(phrase, w))
    return out


def read_hotwords(path: str | Path, default_weight: float = DEFAULT_WEIGHT) -> list[Hotword]:
    """:func:`parse_hotwords` of a UTF-8 file; ConfigError when it cannot be read or holds no phrase."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), f"cannot read hotwords: {getattr(e, 'strerror', None) or e}") from None
    words = parse_hotwords(text, str(path), default_weight)
    if not words:
        raise ConfigError(str(path), "no hotword phrase in the file")
    return words


class ContextGraph:
    """A prefix trie of token sequences with per-token bonuses, compiled for batched lookup.

    sequences: token ids of each phrase; weights: the bonus per token of each phrase (a shared prefix
    takes the larger weight). vocab_size: the model's output vocabulary V.
    """

    def __init__(self, sequences: list[list[int]], weights: list[float], vocab_size: int):
        children: list[dict[int, int]] = [{}]
        acc = [0.0]  # bonus collected on the way from the root to each node
        step = [0.0]  # bonus of the token that enters each node
        end = [False]
        for seq, w in zip(sequences, weights):
            if not seq:
                continue
            node = ROOT
            for tok in seq:
                if not 0 <= tok < vocab_size:
                    raise ValueError(f"token {tok} outside the vocabulary of {vocab_size}")
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    acc.append(acc[node] + w)
                    step.append(w)
                    end.append(False)
                elif w > step[nxt]:  # a shared prefix takes the larger weight (subtree sums follow below)
                    step[nxt] = w
                node = nxt
            end[node] = True
        kept = [0.0] * len(children)  # bonus of the longest completed phrase on the path: never withdrawn
        stack = [ROOT]
        while stack:
            node = stack.pop()
            for child in children[node].values():
                acc[child] = acc[node] + step[child]
                kept[child] = acc[child] if end[child] else kept[node]
                stack.append(child)
        self.num_nodes, self.vocab_size = len(children), vocab_size
        self.acc = np.array(acc, dtype=np.float32)
        self.is_end = np.array(end)
        # Leaving a node on a token it has no child for: withdraw the partial match, then step from the root.
        root_next = np.zeros(vocab_size, dtype=np.int64)
        root_delta = np.zeros(vocab_size, dtype=np.float32)
        for tok, child in children[ROOT].items():
            root_next[tok] = ROOT if end[child] and not children[child] else child
            root_delta[tok] = step[child]
        self.next_state = np.tile(root_next, (self.num_nodes, 1))
        self.delta = (root_delta[None, :] - (self.acc - np.array(kept, dtype=np.float32))[:, None]).astype(np.float32)
        for node in range(1, self.num_nodes):
            for tok, child in children[node].items():
                # A finished phrase keeps its bonus; with nothing longer to match the state restarts.
                self.next_state[node, tok] = ROOT if end[child] and not children[child] else child
                self.delta[node, tok] = step[child]

    @classmethod
    def from_hotwords(cls, hotwords: list[Hotword], tokenizer: Tokenizer, vocab_size: int | None = None,
                      normalize=None) -> ContextGraph:
        """Build from phrases: each is normalised like imported transcripts (default
        :func:`asr.text.normalize_librispeech`: upper case, numbers spelled out) and encoded."""
        from asr.text import normalize_librispeech

        normalize = normalize or normalize_librispeech
        vocab = vocab_size or tokenizer.vocab_size
        seqs = [tokenizer.encode(normalize(h.phrase)) for h in hotwords]
        return cls(seqs, [h.weight for h in hotwords], vocab)

    def init_state(self, n: int) -> np.ndarray:
        """(n,) int64 root states."""
        return np.zeros(n, dtype=np.int64)

    def scores(self, state: np.ndarray) -> np.ndarray:
        """(N, V) float32 score change of each token from each row's state (N,)."""
        return self.delta[state]

    def advance(self, state: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """(N,) next states after ``tokens`` (N,) from ``state`` (N,)."""
        return self.next_state[state, tokens]

    def walk(self, tokens: list[int]) -> tuple[int, float]:
        """Final state and total bonus of a token sequence (for tests and rescoring)."""
        state, total = ROOT, 0.0
        for tok in tokens:
            total += float(self.delta[state, tok])
            state = int(self.next_state[state, tok])
        return state, total
