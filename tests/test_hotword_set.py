"""scripts/hotword_set.py: test utterances re-spoken by their own speaker with one word unseen in training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asr.data.manifest import Utterance, read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from hotword_set import read_speakers  # noqa: E402

SPEAKERS = """; Synthetic speakers
;ID  |SEX| SUBSET           |MINUTES| NAME
3578 | M | test-clean       |  1.88 | flite kal16 pitch 140 rate 1 formant 0.938
3615 | M | test-clean       |  1.78 | espeak-ng en-gb-x-gbclan+rob pitch 91 rate 190
"""


def test_speakers_file_is_read_back_into_voices(tmp_path):
    (tmp_path / "SPEAKERS.TXT").write_text(SPEAKERS)
    sp = read_speakers(tmp_path / "SPEAKERS.TXT")
    assert sp["3578"].engine == "flite" and sp["3578"].voice == "kal16" and sp["3578"].formant == 0.938
    assert sp["3615"].voice == "en-gb-x-gbclan+rob" and sp["3615"].rate == 190 and sp["3615"].formant == 1.0
    (tmp_path / "BAD.TXT").write_text("1 | M | test | 1 | festival kal pitch x\n")
    with pytest.raises(SystemExit, match="cannot read speaker 1"):
        read_speakers(tmp_path / "BAD.TXT")


@pytest.mark.skipif(shutil.which("flite") is None or shutil.which("espeak-ng") is None,
                    reason="flite and espeak-ng are not installed")
def test_set_inserts_one_unseen_word_per_utterance(tmp_path):
    (tmp_path / "SPEAKERS.TXT").write_text(SPEAKERS)
    test = [Utterance(f"3578-1-000{i}", "x.flac", 1.0, "GOOD NIGHT", "3578") for i in range(2)]
    test.append(Utterance("3615-1-0000", "x.flac", 1.0, "HOME TIME", "3615"))
    write_manifest(tmp_path / "test.jsonl", test)
    write_manifest(tmp_path / "train.jsonl", [Utterance("1-1-0000", "x.flac", 1.0, "GOOD RIVER", "1")])
    r = subprocess.run([sys.executable, str(REPO / "scripts/hotword_set.py"), "--manifest", tmp_path / "test.jsonl",
                        "--speakers", tmp_path / "SPEAKERS.TXT", "--train", tmp_path / "train.jsonl",
                        "--out", tmp_path / "hw", "--words", "river,garden,window", "--limit", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hw/hotwords.txt").read_text().split() == ["GARDEN", "WINDOW"]  # RIVER is in training
    out = read_manifest(tmp_path / "hw/manifest.jsonl")
    for old, new in zip(test, out):
        words = new.text.split()
        assert len(words) == 3 and sorted(set(words) - set(old.text.split())) in (["GARDEN"], ["WINDOW"])
        assert new.speaker == old.speaker and new.duration > 0.3 and Path(new.audio).is_file()
    assert json.loads((tmp_path / "hw/manifest.jsonl").read_text().splitlines()[0])["id"].endswith("-hw")
