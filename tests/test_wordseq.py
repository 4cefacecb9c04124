"""Small-vocabulary word sequences: homophone-free vocabulary, distinct sequences, corpus plan."""

from __future__ import annotations

import shutil

import pytest

from asr.data.synth import SynthConfig, plan_corpus
from asr.data.wordseq import pronunciations, pronunciations_one, word_sequences, word_vocabulary
from asr.errors import DataError

needs_t2p = pytest.mark.skipif(shutil.which("t2p") is None, reason="flite's t2p is not installed")

TEXT = ["THE RED BOOK", "THE BOOK IS READ", "WE READ THE RED BOOK", "A DOG RAN TO TOWN",
        "TWO DOGS RAN", "THE DOG IS RED", "I SEE THE SEA", "THE SEA IS BLUE", "THE SKY WAS BLUE",
        "WE BLEW THE HORN", "THE HORN WAS RED"]


@needs_t2p
def test_batched_pronunciations_match_one_word_calls():
    words = ["red", "book", "sea", "blue", "horn", "town", "dogs"]
    assert pronunciations(words) == {w: pronunciations_one(w) for w in words}
    assert pronunciations(["sea"])["sea"] == pronunciations(["see"])["see"]


@needs_t2p
def test_vocabulary_is_frequent_first_and_free_of_homophones():
    vocab = word_vocabulary(TEXT, 14, min_phones=2)
    assert len(vocab) == 14 == len(set(vocab))
    assert vocab[0] == "THE"  # the most frequent word leads
    phones = pronunciations(vocab)
    assert len(set(phones.values())) == len(vocab)
    # Of each homophone pair the more frequent word stays: RED (4) over READ (2), SEA (2) over SEE (1),
    # BLUE (2) over BLEW (1). One-phone words (A, I) are too short to keep.
    assert {"RED", "SEA", "BLUE"} <= set(vocab)
    assert not {"READ", "SEE", "BLEW", "A", "I"} & set(vocab)


@needs_t2p
def test_too_small_a_text_is_a_data_error():
    with pytest.raises(DataError, match="distinct-sounding"):
        word_vocabulary(TEXT, 40)


@needs_t2p
def test_short_words_are_left_out_by_default():
    vocab = word_vocabulary(TEXT, 8)
    assert not {"THE", "IS", "TO", "WE", "A", "I"} & set(vocab)  # two phones or fewer
    assert all(len(p.split()) >= 3 for p in pronunciations(vocab).values())


def test_sequences_are_distinct_in_range_and_deterministic():
    vocab = ["RED", "BOOK", "SEA", "BLUE", "HORN"]
    seqs = word_sequences(vocab, 200, 2, 4, seed=1)
    assert len(seqs) == len(set(seqs)) == 200
    assert all(2 <= len(s.split()) <= 4 and set(s.split()) <= set(vocab) for s in seqs)
    assert seqs == word_sequences(vocab, 200, 2, 4, seed=1)
    assert seqs != word_sequences(vocab, 200, 2, 4, seed=2)
    # Every length is drawn: a uniform length, not only the longest sequences.
    assert {len(s.split()) for s in seqs} == {2, 3, 4}


def test_more_sequences_than_exist_is_a_data_error():
    with pytest.raises(DataError, match="make only 12"):
        word_sequences(["A", "B", "C"], 13, 1, 2, seed=0)


def test_word_sequences_need_a_vocabulary_size(tmp_path):
    with pytest.raises(ValueError, match="vocab"):
        SynthConfig(out_dir=str(tmp_path), utterances=30, word_sequences=True)


@needs_t2p
def test_corpus_plan_of_word_sequences(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXT) + "\n", encoding="utf-8")
    cfg = SynthConfig(out_dir=str(tmp_path / "c"), utterances=60, dev_utterances=10, test_utterances=10,
                      speakers=6, text_file=str(text), min_words=2, max_words=5, vocab=8,
                      word_sequences=True, min_phones=2, seed=4)
    _, jobs = plan_corpus(cfg)
    vocab = set(word_vocabulary(TEXT, 8, min_phones=2))
    by_subset: dict[str, set[str]] = {}
    for job in jobs:
        by_subset.setdefault(job.speaker.subset, set()).add(job.text)
        assert set(job.text.split()) <= vocab and 2 <= len(job.text.split()) <= 5
    train, dev, test = (by_subset[s] for s in ("train-clean", "dev-clean", "test-clean"))
    assert len(jobs) == 60 and not (train & dev or train & test or dev & test)
    # One sequence per utterance: no sentence is heard twice.
    assert len(train | dev | test) == 60
