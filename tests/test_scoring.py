"""WER/CER scoring against hand-counted edits, normalisation and the report files."""

from __future__ import annotations

import json

import pytest
from conftest import word_edit_distance
from hypothesis import given
from hypothesis import strategies as st

from asr.cli import main
from asr.errors import ManifestError
from asr.scoring import SUMMARY_HEADER, ScoreOptions, normalize, read_hyps, score, score_files

REFS = {
    "u1": "the cat sat on the mat",  # hyp: 2 substitutions (sat->sit, the->big)
    "u2": "hello world",  # hyp: exact
    "u3": "a b c d",  # no hypothesis: 4 deletions
}
HYPS = {"u1": "the cat sit on big mat", "u2": "Hello, World!", "zz": "not in refs"}
SPEAKERS = {"u1": "alice", "u2": "bob", "u3": "alice"}


def test_counts_match_hand_computed_edits():
    # u1: 4 hits, 2 S; u2 exact after normalisation; u3 has no hypothesis: 4 D.
    r = score(REFS, HYPS, SPEAKERS)
    by_id = {u.id: u for u in r.utterances}
    assert (by_id["u1"].hits, by_id["u1"].substitutions, by_id["u1"].deletions, by_id["u1"].insertions) == (4, 2, 0, 0)
    assert (by_id["u2"].hits, by_id["u2"].errors) == (2, 0)
    assert (by_id["u3"].deletions, by_id["u3"].hits) == (4, 0)
    assert (r.substitutions, r.deletions, r.insertions) == (2, 4, 0)
    assert r.num_words == 12
    assert r.wer == pytest.approx(6 / 12)
    assert r.missing == ["u3"] and r.extra == ["zz"]
    assert r.speakers["alice"]["num_words"] == 10 and r.speakers["alice"]["wer"] == pytest.approx(6 / 10)
    assert r.speakers["bob"]["wer"] == 0
    assert ("SAT", "SIT", 1) in r.confusions
    assert r.length_ratio == pytest.approx(8 / 12)


def test_insertions_and_deletions_in_one_utterance():
    r = score({"x": "one two three four"}, {"x": "zero one three four five"})
    u = r.utterances[0]
    assert (u.hits, u.substitutions, u.deletions, u.insertions) == (3, 0, 1, 2)
    assert u.eval_line.split() == ["I", "D", "I"]
    assert u.ref_line.split()[0].startswith("*") and u.hyp_line.split()[2].startswith("*")


def test_character_error_rate():
    r = score({"x": "abcd"}, {"x": "abxd"})
    assert r.num_chars == 4 and r.char_errors == 1 and r.cer == pytest.approx(0.25)


def test_normalisation_options():
    assert normalize("Don't  STOP, now!", ScoreOptions()) == "DONT STOP NOW"
    assert normalize("Don't stop.", ScoreOptions(keep_apostrophes=True)) == "DON'T STOP"
    assert normalize("Don't stop.", ScoreOptions(normalize_case=False, keep_punctuation=True)) == "Don't stop."
    strict = score({"x": "Hello world"}, {"x": "hello world"}, options=ScoreOptions(normalize_case=False))
    assert strict.substitutions == 1
    assert score({"x": "Hello world"}, {"x": "hello world"}).wer == 0


def test_report_files(tmp_path):
    manifest = tmp_path / "ref.jsonl"
    manifest.write_text("".join(json.dumps({"id": i, "audio": f"{i}.wav", "duration": 1.0, "text": t,
                                            "speaker": SPEAKERS[i]}) + "\n" for i, t in REFS.items()))
    hyps = tmp_path / "hyps.jsonl"
    hyps.write_text("".join(json.dumps({"id": i, "text": t, "guards": {"ngram_repeat": 1}}) + "\n"
                            for i, t in HYPS.items()))
    out = tmp_path / "score"
    report = score_files(manifest, hyps, out, ScoreOptions(), name="dev")
    results = json.loads((out / "results.json").read_text())
    assert results["wer"] == pytest.approx(report.wer) and results["num_utts"] == 3
    assert results["options"]["normalize_case"] is True
    assert results["guards"] == {"ngram_repeat": 2}  # u1 and u2; zz has no reference
    row = (out / "summary.md").read_text().strip()
    assert row.count("|") == SUMMARY_HEADER.splitlines()[0].count("|") and row.startswith("| dev | 3 | 12 |")
    wer_txt = (out / "wer.txt").read_text()
    assert "REF:  the cat SAT on THE mat" in wer_txt and "HYP:  the cat SIT on BIG mat" in wer_txt
    assert "%WER 50.00" in wer_txt


def test_kaldi_text_hypotheses_and_bad_files(tmp_path):
    text = tmp_path / "text"
    text.write_text("u1 the cat\nu2\n")
    hyps, guards = read_hyps(text)
    assert hyps == {"u1": "the cat", "u2": ""} and guards == {}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\nnot json\n')
    with pytest.raises(ManifestError, match="bad.jsonl:2"):
        read_hyps(bad)


def _write(tmp_path, refs: dict[str, str], hyps: dict[str, str]):
    manifest, hyp_path = tmp_path / "ref.jsonl", tmp_path / "hyps.jsonl"
    manifest.write_text("".join(json.dumps({"id": i, "audio": f"{i}.wav", "duration": 1.0, "text": t,
                                            "speaker": SPEAKERS.get(i, "")}) + "\n" for i, t in refs.items()))
    hyp_path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in hyps.items()))
    return manifest, hyp_path


def test_cli_score_reports_the_hand_counted_wer(tmp_path, capsys):
    # By hand: u1 2 substitutions, u2 none after normalisation, u3 4 deletions: 6 errors in 12 words.
    manifest, hyps = _write(tmp_path, REFS, HYPS)
    assert main(["score", "--ref", str(manifest), "--hyp", str(hyps), "--out-dir", str(tmp_path / "s"),
                 "--name", "dev"]) == 0
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert (results["wer"], results["num_words"], results["num_utts"]) == (0.5, 12, 3)
    assert (results["substitutions"], results["deletions"], results["insertions"]) == (2, 4, 0)
    assert (tmp_path / "s" / "summary.md").read_text().startswith("| dev | 3 | 12 | 50.00 |")


WORD = st.sampled_from(["A", "B", "C", "D"])


@given(st.lists(st.tuples(st.lists(WORD, min_size=1, max_size=8), st.lists(WORD, max_size=8)), min_size=1,
                max_size=5))
def test_wer_equals_an_independent_edit_distance(pairs):
    refs = {f"u{i}": " ".join(r) for i, (r, _) in enumerate(pairs)}
    hyps = {f"u{i}": " ".join(h) for i, (_, h) in enumerate(pairs)}
    r = score(refs, hyps)
    errors = sum(word_edit_distance(ref, hyp) for ref, hyp in pairs)
    assert r.substitutions + r.deletions + r.insertions == errors
    assert r.num_words == sum(len(ref) for ref, _ in pairs)
    assert r.wer == pytest.approx(errors / r.num_words)
    assert all(u.hits + u.substitutions + u.deletions == len(ref) for u, (ref, _) in zip(r.utterances, pairs))
