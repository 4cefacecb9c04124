"""scripts/dev_voice_set.py: the corpus' dev sentences spoken by espeak-ng variants no training speaker uses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asr.data.importers import import_librispeech

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from dev_voice_set import training_variants  # noqa: E402

SPEAKERS = """; Synthetic speakers
;ID  |SEX| SUBSET           |MINUTES| NAME
100 | M | train-clean      |  3.16 | flite kal16 pitch 160 rate 1.12 formant 1.011
137 | F | train-clean      |  2.94 | espeak-ng en-gb-x-gbcwmd+f5 pitch 19 rate 180 formant 0.892
211 | M | train-clean      |  2.75 | espeak-ng en pitch 13 rate 150
3393 | M | dev-clean        |  2.41 | espeak-ng en-us-nyc+klatt3 pitch 23 rate 155 formant 1.054
"""


def _corpus(root: Path) -> Path:
    root.mkdir()
    (root / "SPEAKERS.TXT").write_text(SPEAKERS)
    chapter = root / "dev-clean" / "3393" / "1"
    chapter.mkdir(parents=True)
    (chapter / "3393-1.trans.txt").write_text("3393-1-0000 GOOD MORNING\n3393-1-0001 THREE TIMES\n"
                                              "3393-1-0002 NOT NOW\n3393-1-0003 COME HERE\n")
    return root


def test_training_variants_are_those_of_training_speakers_only(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    # "" is espeak-ng's default variant; the dev speaker's klatt3 is not a training variant.
    assert training_variants(corpus / "SPEAKERS.TXT") == {"f5", ""}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_set_speaks_dev_sentences_with_unseen_variants(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    out = tmp_path / "dev-voice"
    subprocess.run([sys.executable, str(REPO / "scripts" / "dev_voice_set.py"), "--corpus", str(corpus),
                    "--out", str(out), "--speakers", "2", "--utts", "2"], check=True, capture_output=True)
    info = json.loads((out / "speakers.json").read_text())
    assert [s["sex"] for s in info] == ["M", "F"]
    variants = [s["voice"].split()[1].partition("+")[2] for s in info]
    assert all(v and v not in ("f5", "") for v in variants) and len(set(variants)) == 2
    utts = import_librispeech(out).utterances
    assert len(utts) == 4 and len({u.speaker for u in utts}) == 2
    dev = {"GOOD MORNING", "THREE TIMES", "NOT NOW", "COME HERE"}
    assert {u.text for u in utts} == dev and all(u.duration > 0.2 for u in utts)


def test_too_few_dev_sentences_is_a_one_line_error(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "dev_voice_set.py"), "--corpus", str(corpus),
                          "--out", str(tmp_path / "o"), "--speakers", "3", "--utts", "2"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "has 4 sentences; need 6" in run.stderr
    assert "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "dev_voice_set.py"), "--corpus", str(tmp_path),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert run.returncode != 0 and "SPEAKERS.TXT: not found" in run.stderr and "Traceback" not in run.stderr
