"""recipes/natural/local/lm_text.py: the LM's text holds WordNet sentences but none of the evaluation sets'."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "natural" / "local" / "lm_text.py"


def _wordnet(folder: Path) -> Path:
    folder.mkdir()
    (folder / "data.noun").write_text(
        "  1 This software and database is being provided\n"
        '00001 03 n 01 cat 0 000 | a small animal; "the cat sat on the mat"; "dogs bark at night"\n'
        '00002 03 n 01 sun 0 000 | a star; "the sun is hot"; "a very long sentence with far too many words '
        'to be kept here at all"\n', encoding="utf-8")
    return folder


def test_evaluation_sentences_are_left_out(tmp_path):
    wordnet = _wordnet(tmp_path / "wordnet")
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"id": "a", "audio": "a.flac", "duration": 1.0, "text": "THE SUN IS HOT"}) + "\n")
    out = tmp_path / "lm.txt"
    r = subprocess.run([sys.executable, str(SCRIPT), "--exclude", str(dev), "--out", str(out), "--wordnet-dir",
                        str(wordnet), "--max-words", "8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_text().splitlines() == ["DOGS BARK AT NIGHT", "THE CAT SAT ON THE MAT"]


def test_a_bad_manifest_is_a_one_line_error(tmp_path):
    bad = tmp_path / "dev.jsonl"
    bad.write_text("{not json\n")
    r = subprocess.run([sys.executable, str(SCRIPT), "--exclude", str(bad), "--out", str(tmp_path / "o.txt"),
                        "--wordnet-dir", str(_wordnet(tmp_path / "wn"))], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "dev.jsonl" in r.stderr
