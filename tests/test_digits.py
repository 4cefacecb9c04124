"""Digit text for synthetic corpora (asr.data.digits) and its use by `asr corpus synth --digits`."""

from collections import Counter

import pytest

from asr.data.digits import DIGIT_WORDS, digit_strings
from asr.data.synth import SynthConfig, plan_corpus


def test_half_single_words_each_digit_equally_often():
    texts = digit_strings(400, 1, 4, seed=3)
    assert len(texts) == 400
    singles = [t for t in texts if " " not in t]
    assert len(singles) == 200
    assert set(Counter(singles).values()) == {20}  # 10 digits x 20
    lengths = Counter(len(t.split()) for t in texts if " " in t)
    assert set(lengths) == {2, 3, 4}
    assert all(w in DIGIT_WORDS for t in texts for w in t.split())


def test_only_single_words_when_max_is_one():
    texts = digit_strings(30, 1, 1, single_fraction=0.2)
    assert sorted(texts) == sorted(DIGIT_WORDS * 3)


def test_seeded():
    assert digit_strings(50, 1, 3, seed=1) == digit_strings(50, 1, 3, seed=1)
    assert digit_strings(50, 1, 3, seed=1) != digit_strings(50, 1, 3, seed=2)


@pytest.mark.parametrize("args", [(-1, 1, 1), (5, 0, 2), (5, 3, 2)])
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        digit_strings(*args)


def test_bad_fraction():
    with pytest.raises(ValueError):
        digit_strings(5, 1, 2, single_fraction=1.5)


def test_corpus_plan_speaks_digits_in_every_subset(tmp_path):
    cfg = SynthConfig(str(tmp_path), utterances=60, dev_utterances=6, test_utterances=6, speakers=8,
                      min_words=1, max_words=3, digits=True, seed=4)
    speakers, jobs = plan_corpus(cfg)
    assert len(jobs) == 60
    assert {j.speaker.subset for j in jobs} == {"train-clean", "dev-clean", "test-clean"}
    assert all(w in DIGIT_WORDS for j in jobs for w in j.text.split())
    assert any(" " not in j.text for j in jobs) and any(" " in j.text for j in jobs)
    # the held-out flite voice speaks only in test, as for sentences
    assert all(j.speaker.subset == "test-clean" for j in jobs if j.speaker.voice == "rms")


def test_digits_exclude_other_text_sources(tmp_path):
    with pytest.raises(ValueError, match="digits"):
        SynthConfig(str(tmp_path), utterances=10, digits=True, word_sequences=True, vocab=10)
    with pytest.raises(ValueError, match="digits"):
        SynthConfig(str(tmp_path), utterances=10, digits=True, text_file="x.txt")


def test_cli_synthesises_digits(tmp_path, capsys):
    from asr.cli import main

    out = tmp_path / "c"
    assert main(["corpus", "synth", "--out", str(out), "--digits", "--utterances", "12", "--dev-utterances", "2",
                 "--test-utterances", "2", "--speakers", "6", "--max-words", "2", "--nj", "1"]) == 0
    lines = [ln for f in out.glob("*/*/*/*.trans.txt") for ln in f.read_text().splitlines()]
    assert len(lines) == 12
    assert all(w in DIGIT_WORDS for ln in lines for w in ln.split()[1:])
    assert len(list(out.glob("*/*/*/*.flac"))) == 12
