"""recipes/fsdd leave-one-speaker-out helpers: the fold list and the fold table (mean and worst)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

LOCAL = Path(__file__).resolve().parents[1] / "recipes" / "fsdd" / "local"


def test_splits_lists_every_speaker_once(tmp_path):
    rec = tmp_path / "recordings"
    rec.mkdir()
    for name in ("0_theo_0.wav", "9_theo_49.wav", "3_george_12.wav", "1_yweweler_3.wav", "README.md"):
        (rec / name).write_bytes(b"")
    out = subprocess.run(["bash", str(LOCAL / "loso.sh"), "splits", str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["loso-george", "loso-theo", "loso-yweweler"]


def _result(path: Path, wer: float, n: int = 500) -> None:
    path.mkdir(parents=True)
    errors = round(wer * n)
    path.joinpath("results.json").write_text(json.dumps(
        {"num_utts": n, "wer": wer, "cer": wer / 2, "substitutions": errors, "deletions": 0, "insertions": 0}))


def _table(score_dir: Path, *splits: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOCAL / "loso_table.py"), "--score-dir", str(score_dir), *splits],
                          capture_output=True, text=True)


def test_table_has_folds_mean_and_worst(tmp_path):
    score = tmp_path / "score"
    _result(score / "loso-a", 0.02)
    _result(score / "loso-b", 0.10)
    _result(score / "loso-c", 0.06)
    _result(score / "official", 0.5)  # not a fold: left out of the mean
    r = _table(score, "loso-a", "loso-b", "loso-c", "official")
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "LOSO.md").read_text().splitlines()
    assert rows[2].startswith("| a | 500 | 2.00 |")
    assert "**mean of 3 folds** | | **6.00**" in rows[5]
    assert "**worst (b)** | | **10.00**" in rows[6]


def test_a_missing_fold_is_an_error_naming_it(tmp_path):
    _result(tmp_path / "score" / "loso-a", 0.02)
    r = _table(tmp_path / "score", "loso-a", "loso-b")
    assert r.returncode == 2
    assert "loso-b/results.json" in r.stderr


@pytest.mark.parametrize("splits", [["official", "holdout"]])
def test_no_folds_writes_nothing(tmp_path, splits):
    assert _table(tmp_path / "score", *splits).returncode == 0
    assert not (tmp_path / "LOSO.md").exists()


def test_loso_quick_with_synthetic_digits_and_zeroshot(tmp_path):
    """`run.sh --quick --loso --synth-utts N --splits zeroshot` on two speakers: one fold per speaker, the
    synthetic digits in every fold's training set, the zero-shot split and the fold table."""
    from test_recipes import _fsdd_layout, _run

    recordings, speakers = _fsdd_layout(tmp_path / "recordings")
    exp = tmp_path / "exp"
    _run(REPO / "recipes/fsdd/run.sh", "--quick", "--loso", "--synth-utts", "30", "--splits", "zeroshot",
         "--fsdd-dir", recordings, "--exp-dir", exp, "--train-jobs", "2", "--nj", "1", timeout=900)
    exp = Path(f"{exp}-quick")
    manifests = exp / "data" / "manifests"
    for held, other in (speakers, speakers[::-1]):
        train = [json.loads(line) for line in open(manifests / f"loso-{held}" / "train.jsonl")]
        test = [json.loads(line) for line in open(manifests / f"loso-{held}" / "test.jsonl")]
        assert {u["speaker"] for u in test} == {held}
        assert held not in {u["speaker"] for u in train} and other in {u["speaker"] for u in train}
        assert any(u["audio"].endswith(".flac") for u in train)  # the synthetic digits
    zs_train = [json.loads(line) for line in open(manifests / "zeroshot" / "train.jsonl")]
    assert zs_train and not {u["speaker"] for u in zs_train} & set(speakers)
    assert sum(1 for _ in open(manifests / "zeroshot" / "test.jsonl")) == len(list(recordings.glob("*.wav")))
    assert (exp / "score" / "zeroshot-official" / "results.json").is_file()
    table = (exp / "LOSO.md").read_text()
    assert f"| {speakers[0]} |" in table and f"| {speakers[1]} |" in table and "mean of 2 folds" in table
