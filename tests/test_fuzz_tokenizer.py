"""Property tests of the tokenizer: any text encodes and decodes, any bytes load or raise TokenizerError."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.errors import TokenizerError
from asr.tokenizer import SOS_ID, UNK_ID, Tokenizer

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"
FUZZ = settings(max_examples=int(os.environ.get("ASR_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _corpus(n: int = 300) -> list[str]:
    rng = random.Random(0)
    words = ["".join(rng.choice(ALPHABET[:-1]) for _ in range(rng.randint(1, 8))) for _ in range(150)]
    words += ["DON'T", "IT'S"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer.train(_corpus(), tmp_path_factory.mktemp("fuzz") / "tok", vocab_size=80)


@FUZZ
@given(text=st.text())
def test_any_unicode_text_encodes_to_valid_ids_and_decodes_to_a_string(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 1 <= i < tok.vocab_size and i != SOS_ID for i in ids)
    out = tok.decode(ids)
    assert isinstance(out, str)
    # Decoding is stable: what comes out encodes back to the same ids, except where <unk> stood in.
    if UNK_ID not in ids:
        assert tok.encode(out) == ids


normalised = st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=12), min_size=1, max_size=15).map(" ".join)


@FUZZ
@given(text=normalised)
def test_round_trip_is_exact_on_normalised_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_as_model_raise_only_tokenizer_error(tmp_path, data):
    path = tmp_path / "fuzz.model"
    path.write_bytes(data)
    with pytest.raises(TokenizerError):
        Tokenizer.load(path)


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 20), cut=st.floats(0.0, 1.0))
def test_corrupted_real_model_loads_or_raises_tokenizer_error(tok, tmp_path, seed, flips, cut):
    data = bytearray(tok.model_path.read_bytes())
    rng = random.Random(seed)
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    path = tmp_path / "corrupt.model"
    path.write_bytes(bytes(data[: max(1, int(len(data) * cut))] if cut < 0.99 else data))
    try:
        loaded = Tokenizer.load(path)
    except TokenizerError:
        return
    # A corruption that still parses must give a working tokenizer with our special ids.
    assert loaded.id_to_piece(SOS_ID) == "<sos/eos>"
    loaded.decode(loaded.encode("DON'T STOP"))
