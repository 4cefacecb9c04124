"""Tokenizer (asr/tokenizer.py): special ids, exact round trip, unigram and bpe, bad model files."""

from __future__ import annotations

import random

import pytest

from asr.errors import TokenizerError
from asr.tokenizer import BLANK_ID, EOS_ID, SOS_ID, UNK_ID, Tokenizer

WORDS = ("THE QUICK BROWN FOX JUMPS OVER A LAZY DOG SHE SELLS SEA SHELLS BY SHORE PETER PIPER PICKED "
         "PECK OF PICKLED PEPPERS HOW MUCH WOOD WOULD WOODCHUCK CHUCK IF COULD IT'S DON'T ZERO ONE TWO "
         "THREE FOUR FIVE SIX SEVEN EIGHT NINE").split()


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tok(request, tmp_path_factory) -> Tokenizer:
    prefix = tmp_path_factory.mktemp(request.param) / "tok"
    return Tokenizer.train(_sentences(400, seed=1), prefix, vocab_size=60, model_type=request.param)


def test_special_pieces_have_the_contract_ids(tok):
    assert (BLANK_ID, UNK_ID, SOS_ID, EOS_ID) == (0, 1, 2, 2)
    assert [tok.id_to_piece(i) for i in range(3)] == ["<blank>", "<unk>", "<sos/eos>"]
    assert 3 < tok.vocab_size <= 60


def test_round_trip_is_exact_on_normalised_text(tok):
    for text in _sentences(200, seed=2):  # unseen sentences over the same alphabet
        ids = tok.encode(text)
        assert ids and all(3 <= i < tok.vocab_size for i in ids), text
        assert tok.decode(ids) == text


def test_encode_adds_no_sos_eos_and_decode_drops_specials(tok):
    ids = tok.encode("HOW MUCH WOOD")
    assert SOS_ID not in ids and BLANK_ID not in ids
    noisy = [SOS_ID, BLANK_ID, *ids[:1], BLANK_ID, *ids[1:], EOS_ID, tok.vocab_size + 5, -3]
    assert tok.decode(noisy) == "HOW MUCH WOOD"
    assert tok.decode([]) == ""


def test_unknown_characters_map_to_unk(tok):
    ids = tok.encode("FOX \u4e2d\u6587 DOG")
    assert UNK_ID in ids
    assert tok.decode(ids).startswith("FOX") and tok.decode(ids).endswith("DOG")


def test_load_gives_the_same_encoding_and_vocab_file(tok):
    again = Tokenizer.load(tok.model_path)
    text = "PETER PIPER PICKED A PECK"
    assert again.encode(text) == tok.encode(text)
    vocab = tok.model_path.with_suffix(".vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == tok.vocab_size and vocab[2] == "<sos/eos>\t2"


def test_unigram_and_bpe_segment_differently(tmp_path):
    texts = _sentences(400, seed=1)
    uni = Tokenizer.train(texts, tmp_path / "u", 60, "unigram")
    bpe = Tokenizer.train(texts, tmp_path / "b", 60, "bpe")
    sample = _sentences(50, seed=3)
    assert any(uni.pieces(t) != bpe.pieces(t) for t in sample)
    assert all(uni.decode(uni.encode(t)) == bpe.decode(bpe.encode(t)) == t for t in sample)


@pytest.mark.parametrize("content", [b"", b"not a model at all", bytes(range(256)) * 8])
def test_bad_model_file_raises_tokenizer_error(tmp_path, content):
    path = tmp_path / "bad.model"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match="bad.model"):
        Tokenizer.load(path)


def test_missing_model_and_folder_raise_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.load(tmp_path / "missing.model")
    with pytest.raises(TokenizerError):
        Tokenizer.load(tmp_path)


def test_model_without_the_special_ids_is_rejected(tmp_path):
    import sentencepiece as spm

    # sentencepiece's own defaults put <unk> at 0 and <s> at 1: not our id layout.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_sentences(200, seed=4)),
                                   model_prefix=str(tmp_path / "plain"), vocab_size=40, minloglevel=2)
    with pytest.raises(TokenizerError, match="ids 0-2"):
        Tokenizer.load(tmp_path / "plain.model")


def test_training_errors_are_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no text"):
        Tokenizer.train(["", "   "], tmp_path / "t", 30)
    with pytest.raises(TokenizerError, match="model_type"):
        Tokenizer.train(["A B"], tmp_path / "t", 30, model_type="wordpiece")
