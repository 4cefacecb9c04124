"""Transcript normalisation to LibriSpeech's convention: upper-case words, spelled-out numbers.

LibriSpeech transcripts hold only ``A-Z``, the apostrophe and single spaces, with numbers written as
the reader said them ("TWENTY FIRST", "NINETEEN NINETY"). :func:`normalize_librispeech` maps free
text onto that alphabet so that text from any source (WordNet examples, Kaldi ``text`` files, TSV
lists) can share one tokenizer. Pure Python; no dependencies.
"""

from __future__ import annotations

import re
import unicodedata

_ONES = ("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN FOURTEEN "
         "FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN").split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
# Short scale, as spoken in American and modern British English.
_SCALES = ("THOUSAND MILLION BILLION TRILLION QUADRILLION QUINTILLION SEXTILLION SEPTILLION "
           "OCTILLION NONILLION DECILLION").split()
_MAX_CARDINAL = 1000 ** (len(_SCALES) + 1) - 1
_IRREGULAR_ORDINALS = {"ONE": "FIRST", "TWO": "SECOND", "THREE": "THIRD", "FIVE": "FIFTH",
                       "EIGHT": "EIGHTH", "NINE": "NINTH", "TWELVE": "TWELFTH"}
# NFKD leaves these letters alone; spell them the way an English reader would.
_LETTER_FOLDS = {"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O",
                 "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "TH", "ð": "d", "Ð": "D",
                 "ı": "i"}
_PUNCT_FOLDS = {"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"',
                "\u2013": " - ", "\u2014": " - ", "\u00a0": " ", "°": " DEGREES "}
_ABBREVIATIONS = {"mr": "MISTER", "mrs": "MISSUS", "dr": "DOCTOR", "st": "SAINT", "jr": "JUNIOR",
                  "sr": "SENIOR", "vs": "VERSUS", "etc": "ET CETERA", "e.g": "FOR EXAMPLE",
                  "i.e": "THAT IS"}
_SYMBOLS = {"%": " PERCENT ", "&": " AND ", "@": " AT ", "+": " PLUS ", "=": " EQUALS "}

_ABBREV_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in _ABBREVIATIONS) + r")\.", re.IGNORECASE)
_MONEY_RE = re.compile(r"\$\s?(\d[\d,]*)(?:\.(\d{1,2}))?(?!\d)")
_ORDINAL_RE = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"(?<![\d.])'?(\d+0)'?s\b")
_DECIMAL_RE = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")
_GROUPED_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d])")
_MINUS_RE = re.compile(r"(?:(?<=\s)|^)-(?=\d)")
_INT_RE = re.compile(r"\d+")
_DIGIT_RE = re.compile(r"\d")
# After ASCII folding, everything outside [A-Z'] becomes a space (a word boundary).
_TO_SPACE = {c: " " for c in range(128) if not (chr(c).isupper() or chr(c) == "'")}
_LOOSE_APOSTROPHE_RE = re.compile(r"(?<![A-Z])'|'(?![A-Z])")


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "HUNDRED"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> str:
    """Spell a whole number in LibriSpeech style: ``number_to_words(2021) == "TWO THOUSAND TWENTY ONE"``.

    Negative numbers start with MINUS. Numbers beyond the named scales are read digit by digit.
    """
    n = int(n)
    if n < 0:
        return "MINUS " + number_to_words(-n)
    if n > _MAX_CARDINAL:
        return _digits(str(n))
    if n < 1000:
        return " ".join(_below_thousand(n))
    words: list[str] = []
    groups = []
    while n:
        n, rest = divmod(n, 1000)
        groups.append(rest)
    for scale in range(len(groups) - 1, -1, -1):
        if groups[scale]:
            words += _below_thousand(groups[scale])
            if scale:
                words.append(_SCALES[scale - 1])
    return " ".join(words)


def ordinal_to_words(n: int) -> str:
    """Spell an ordinal: ``ordinal_to_words(21) == "TWENTY FIRST"``."""
    head, _, last = number_to_words(n).rpartition(" ")
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("Y"):
        last = last[:-1] + "IETH"
    else:
        last += "TH"
    return f"{head} {last}".strip()


def year_to_words(n: int) -> str:
    """Read a year the usual way: 1990 -> NINETEEN NINETY, 1905 -> NINETEEN O FIVE, 2005 -> TWO THOUSAND FIVE."""
    century, rest = divmod(n, 100)
    if n < 1000 or n % 1000 == 0 or 2000 <= n < 2010:
        return number_to_words(n)
    if rest == 0:
        return f"{number_to_words(century)} HUNDRED"
    if rest < 10:
        return f"{number_to_words(century)} O {_ONES[rest]}"
    return f"{number_to_words(century)} {number_to_words(rest)}"


def _digits(text: str) -> str:
    return " ".join(_ONES[int(d)] for d in text)


def _integer(text: str) -> str:
    # "007" and long digit strings (phone numbers, ids) are read digit by digit.
    if len(text) > 1 and text.startswith("0") or len(text) > 15:
        return _digits(text)
    n = int(text)
    if len(text) == 4 and 1100 <= n <= 2099:
        return year_to_words(n)
    return number_to_words(n)


def _plural(words: str) -> str:
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "IES" if last.endswith("Y") else last + "S"
    return f"{head} {last}".strip()


def _money(m: re.Match) -> str:
    dollars = int(m.group(1).replace(",", ""))
    out = f" {number_to_words(dollars)} DOLLAR{'' if dollars == 1 else 'S'}"
    if m.group(2):
        cents = int(m.group(2).ljust(2, "0"))
        if cents:
            out += f" {number_to_words(cents)} CENT{'' if cents == 1 else 'S'}"
    return out + " "


def _decimal(m: re.Match) -> str:
    whole = f"{_integer(m.group(1))} " if m.group(1) else ""
    return f" {whole}POINT {_digits(m.group(2))} "


def fold_to_ascii(text: str) -> str:
    """Fold accents and typographic punctuation to ASCII (NFKD, combining marks dropped)."""
    if text.isascii():
        return text
    text = "".join(_PUNCT_FOLDS.get(c, _LETTER_FOLDS.get(c, c)) for c in text)
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if c.isascii() and not unicodedata.combining(c))


def _spell_numbers(text: str) -> str:
    text = _MONEY_RE.sub(_money, text)
    text = _ORDINAL_RE.sub(lambda m: f" {ordinal_to_words(int(m.group(1)))} ", text)
    text = _DECADE_RE.sub(lambda m: f" {_plural(_integer(m.group(1)))} ", text)
    # A number written with thousands separators is a quantity, never a year.
    text = _GROUPED_RE.sub(lambda m: f" {number_to_words(int(m.group(1).replace(',', '')))} ", text)
    text = _DECIMAL_RE.sub(_decimal, text)
    text = _MINUS_RE.sub(" MINUS ", text)
    return _INT_RE.sub(lambda m: f" {_integer(m.group(0))} ", text)


def normalize_librispeech(text: str) -> str:
    """Normalise free text to LibriSpeech's transcript alphabet ``[A-Z' ]``.

    Upper case; numbers, ordinals, decimals, years, ``$`` amounts and ``%`` spelled out; a few
    abbreviations expanded (MR. -> MISTER); accents folded to ASCII; punctuation removed except
    apostrophes inside words; whitespace collapsed. Returns "" for text with no words.
    """
    text = fold_to_ascii(text)
    if "." in text:
        text = _ABBREV_RE.sub(lambda m: f" {_ABBREVIATIONS[m.group(1).lower()]} ", text)
    if _DIGIT_RE.search(text):
        text = _spell_numbers(text)
    for symbol, word in _SYMBOLS.items():
        if symbol in text:
            text = text.replace(symbol, word)
    text = text.upper().translate(_TO_SPACE)
    if "'" in text:
        text = _LOOSE_APOSTROPHE_RE.sub(" ", text)
    return " ".join(text.split())


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) made one space: for TSV cells and logs."""
    return " ".join(str(text).split())
