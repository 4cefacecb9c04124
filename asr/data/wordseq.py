"""Small-vocabulary text for synthetic corpora: random sequences of words, homophones removed.

A corpus of natural sentences from a few thousand words lets a small model memorise whole sentences
instead of learning the words (measured in recipes/mini: train token accuracy 0.86-0.99 against dev
0.58-0.76). Random word sequences over a fixed vocabulary, as in AN4 or TIDIGITS, give every word
hundreds of examples in changing contexts, so what is measured is recognition of the words themselves.

Words that sound the same (TO/TWO/TOO, THERE/THEIR) cannot be told apart without context, which a
random sequence does not give; of each set of homophones under flite's letter-to-sound rules
(``t2p``) only the most frequent word is kept.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from collections import Counter

from asr.errors import DataError

_STRESS_RE = re.compile(r"\d")


def pronunciations(words: list[str]) -> dict[str, str]:
    """Phone strings (stress marks dropped) of ``words`` from flite's ``t2p``, one call for all.

    Words are separated by full stops, which ``t2p`` turns into pauses; the output is split on them.
    """
    if not words:
        return {}
    if shutil.which("t2p") is None:
        raise DataError("t2p", "flite's t2p not found; install the Debian package: sudo apt-get install flite")
    text = " ".join(w.lower() + "." for w in words)
    out = subprocess.run(["t2p", text], capture_output=True, text=True, check=False).stdout
    phones = [p.strip() for p in _STRESS_RE.sub("", out).split("pau")]
    phones = [p for p in phones if p]
    if len(phones) != len(words):  # a word with an internal pause: fall back to one call per word
        return {w: pronunciations_one(w) for w in words}
    return dict(zip(words, phones))


def pronunciations_one(word: str) -> str:
    out = subprocess.run(["t2p", word.lower()], capture_output=True, text=True, check=False).stdout
    return " ".join(p for p in _STRESS_RE.sub("", out).split() if p != "pau")


def word_vocabulary(sentences: list[str], size: int, min_phones: int = 3) -> list[str]:
    """The ``size`` most frequent words of ``sentences`` with no two that sound alike.

    Ties in frequency are broken alphabetically; of homophones the more frequent word stays. Words
    of fewer than ``min_phones`` phones (A, I, THE, OF, IN with the default 3) are left out: in a
    sentence the context carries them, alone in a random sequence they are too short to tell apart.
    Raises DataError when fewer than ``size`` words remain.
    """
    counts = Counter(w for s in sentences for w in s.split())
    ranked = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    chosen: list[str] = []
    heard: set[str] = set()
    # Candidates in blocks: a block a little larger than what is missing, so t2p runs a few times.
    start = 0
    while len(chosen) < size and start < len(ranked):
        block = ranked[start:start + 2 * (size - len(chosen)) + 16]
        start += len(block)
        for word, phones in pronunciations(block).items():
            if len(chosen) == size:
                break
            if len(phones.split()) < min_phones or phones in heard:
                continue
            heard.add(phones)
            chosen.append(word)
    if len(chosen) < size:
        raise DataError("vocabulary", f"only {len(chosen)} distinct-sounding words in the text; asked for {size}")
    return chosen


def word_sequences(vocabulary: list[str], count: int, min_words: int, max_words: int, seed: int) -> list[str]:
    """``count`` distinct sequences of ``min_words``..``max_words`` words drawn uniformly from ``vocabulary``.

    Sorted, so the result depends only on the arguments, not on how it is consumed.
    """
    if not 1 <= min_words <= max_words:
        raise ValueError("need 1 <= min_words <= max_words")
    possible = sum(len(vocabulary) ** n for n in range(min_words, max_words + 1))
    if count > possible:
        raise DataError("vocabulary", f"{len(vocabulary)} words make only {possible} sequences; asked for {count}")
    rng = random.Random(f"word-sequences:{seed}")
    out: set[str] = set()
    while len(out) < count:
        n = rng.randint(min_words, max_words)
        out.add(" ".join(rng.choice(vocabulary) for _ in range(n)))
    return sorted(out)
