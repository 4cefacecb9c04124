"""Digit text for synthetic corpora: digit words alone and strings of digit words (as in TIDIGITS).

Used to add synthetic voices to a digit recogniser (recipes/fsdd): a digit word alone matches FSDD's
isolated digits, and strings give each word other left and right neighbours, as connected speech does.
Unlike sentences, the texts repeat (there are only ten single digits), so they are drawn, not de-duplicated.
"""

from __future__ import annotations

import random

DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")


def digit_strings(count: int, min_digits: int = 1, max_digits: int = 1, single_fraction: float = 0.5,
                  seed: int = 0) -> list[str]:
    """``count`` texts of digit words: a ``single_fraction`` of single words, cycling through the ten
    digits so each is equally frequent, and the rest strings of ``min_digits``..``max_digits`` words
    (at least two) drawn uniformly.

    The result depends only on the arguments. With ``max_digits`` 1 every text is a single word.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError("need 1 <= min_digits <= max_digits")
    if not 0.0 <= single_fraction <= 1.0:
        raise ValueError(f"single_fraction must be in [0, 1], got {single_fraction}")
    rng = random.Random(f"digits:{seed}")
    n_single = count if max_digits == 1 else round(count * single_fraction)
    singles = [DIGIT_WORDS[i % len(DIGIT_WORDS)] for i in range(n_single)]
    lo = max(2, min_digits)
    strings = [" ".join(rng.choice(DIGIT_WORDS) for _ in range(rng.randint(lo, max_digits)))
               for _ in range(count - n_single)]
    texts = singles + strings
    rng.shuffle(texts)
    return texts
