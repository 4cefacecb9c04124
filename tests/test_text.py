"""The LibriSpeech text normaliser and the number speller."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.text import normalize_librispeech, number_to_words, ordinal_to_words, year_to_words

_UNITS = {w: i for i, w in enumerate(
    "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN FOURTEEN FIFTEEN "
    "SIXTEEN SEVENTEEN EIGHTEEN NINETEEN".split())}
_UNITS.update({w: 10 * i for i, w in enumerate("_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split())
               if i >= 2})
_SCALES = {w: 1000 ** (i + 1) for i, w in enumerate("THOUSAND MILLION BILLION TRILLION QUADRILLION".split())}


def words_to_number(text: str) -> int:
    """An independent reader of short-scale English numbers, to check number_to_words against."""
    total = current = 0
    for word in text.split():
        if word in _UNITS:
            current += _UNITS[word]
        elif word == "HUNDRED":
            current *= 100
        else:
            total += current * _SCALES[word]
            current = 0
    return total + current


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_number_to_words_reads_back(n):
    assert words_to_number(number_to_words(n)) == n


@pytest.mark.parametrize("n", [0, 7, 13, 20, 42, 100, 101, 999, 1000, 1001, 10**6, 10**9 + 7])
def test_number_to_words_reads_back_edge_cases(n):
    assert words_to_number(number_to_words(n)) == n
    assert words_to_number(number_to_words(-n).removeprefix("MINUS ")) == n


@pytest.mark.parametrize("n, expected", [
    (1, "FIRST"), (2, "SECOND"), (3, "THIRD"), (4, "FOURTH"), (5, "FIFTH"), (8, "EIGHTH"), (9, "NINTH"),
    (12, "TWELFTH"), (20, "TWENTIETH"), (21, "TWENTY FIRST"), (100, "ONE HUNDREDTH"), (1003, "ONE THOUSAND THIRD"),
])
def test_ordinals(n, expected):
    assert ordinal_to_words(n) == expected


@pytest.mark.parametrize("year, expected", [
    (1990, "NINETEEN NINETY"), (1905, "NINETEEN O FIVE"), (1900, "NINETEEN HUNDRED"),
    (2000, "TWO THOUSAND"), (2005, "TWO THOUSAND FIVE"), (2010, "TWENTY TEN"), (1066, "TEN SIXTY SIX"),
])
def test_years(year, expected):
    assert year_to_words(year) == expected


@pytest.mark.parametrize("raw, expected", [
    ("Hello, world!", "HELLO WORLD"),
    ("  spaced \t out\nlines ", "SPACED OUT LINES"),
    ("The 21st century", "THE TWENTY FIRST CENTURY"),
    ("born in 1990", "BORN IN NINETEEN NINETY"),
    ("3.14 is pi", "THREE POINT ONE FOUR IS PI"),
    ("1,234 people", "ONE THOUSAND TWO HUNDRED THIRTY FOUR PEOPLE"),
    ("50% off", "FIFTY PERCENT OFF"),
    ("$5 and $1.25", "FIVE DOLLARS AND ONE DOLLAR TWENTY FIVE CENTS"),
    ("Don't 'quote' the dogs' bones", "DON'T QUOTE THE DOGS BONES"),
    ("it’s curly", "IT'S CURLY"),
    ("Café naïve façade Straße", "CAFE NAIVE FACADE STRASSE"),
    ("well-known -5 degrees", "WELL KNOWN MINUS FIVE DEGREES"),
    ("in the 1920s", "IN THE NINETEEN TWENTIES"),
    ("Mr. Smith & Dr. Who", "MISTER SMITH AND DOCTOR WHO"),
    ("agent 007", "AGENT ZERO ZERO SEVEN"),
    ("...!?", ""),
    ("", ""),
])
def test_normalize_cases(raw, expected):
    assert normalize_librispeech(raw) == expected


_OUTPUT_RE = re.compile(r"^(?:[A-Z]+(?:'[A-Z]+)*(?: [A-Z]+(?:'[A-Z]+)*)*)?$")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_normalize_output_alphabet_and_idempotence(text):
    out = normalize_librispeech(text)
    # Words of A-Z with apostrophes only inside them, single spaces, no edges.
    assert _OUTPUT_RE.match(out), out
    assert normalize_librispeech(out) == out


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=10**12))
def test_normalize_spells_grouped_and_plain_numbers_alike(n):
    plain, grouped = normalize_librispeech(f"x {n} y"), normalize_librispeech(f"x {n:,} y")
    assert grouped == f"X {number_to_words(n)} Y"
    if not (1100 <= n <= 2099):  # plain four-digit numbers in that range read as years
        assert plain == grouped
