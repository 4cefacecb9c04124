"""The recipes end to end on tiny corpora: every stage runs, leaves a marker, and is skipped on re-run.

The recipes run as a new user runs them: from a shell whose PATH lacks the project's .venv, so each
recipe must find the environment itself (recipes/common.sh). Their WER tables are checked against the
score files and against a word error rate counted here by hand. These are the slowest tests (tens of
seconds each); they need flite and espeak-ng for the synthetic corpora.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, shared_data, word_edit_distance

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("flite") and shutil.which("espeak-ng")),
                       reason="flite and espeak-ng are needed to synthesise the corpora"),
]

VENV_BIN = Path(sys.executable).parent
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _path_without_venvs() -> str:
    """PATH less every virtual environment's bin/ (a folder beside a pyvenv.cfg), as in a fresh shell."""
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and not (Path(p).parent / "pyvenv.cfg").exists() and Path(p).resolve() != VENV_BIN.resolve()]
    return os.pathsep.join(keep)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = _path_without_venvs()
    # The recipes use <repo>/.venv; when these tests run from another environment, point them at it.
    if VENV_BIN.parent.resolve() != (REPO / ".venv").resolve():
        env["ASR_VENV"] = str(VENV_BIN.parent)
    return env


def _run(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    env = _env()
    assert shutil.which("asr", path=env["PATH"]) is None, "the test's PATH must not find asr"
    r = subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def check_results_table(stdout: str, exp: Path, refs: dict[str, Path]) -> None:
    """The table's row for each set agrees with its score files and with a WER counted here by hand."""
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| (\S+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| (\d+) \| (\d+) \|$", stdout, re.M)}
    assert set(rows) == set(refs), stdout[-2000:]
    assert (exp / "RESULTS.md").read_text().strip() in stdout
    for name, ref_path in refs.items():
        utts, words, wer, cer, sub, dels, ins = rows[name]
        refs_text = {json.loads(line)["id"]: json.loads(line)["text"].upper().split()
                     for line in ref_path.read_text().splitlines() if line.strip()}
        hyps = {json.loads(line)["id"]: json.loads(line)["text"].upper().split()
                for line in (exp / "decode" / name / "hyps.jsonl").read_text().splitlines() if line.strip()}
        assert int(utts) == len(refs_text) == len(hyps)
        assert int(words) == sum(len(t) for t in refs_text.values())
        errors = sum(word_edit_distance(refs_text[u], hyps.get(u, [])) for u in refs_text)
        assert int(sub) + int(dels) + int(ins) == errors
        assert float(wer) == pytest.approx(100 * errors / int(words), abs=0.006)
        result = json.loads((exp / "score" / name / "results.json").read_text())
        assert (result["num_utts"], result["num_words"]) == (int(utts), int(words))
        assert float(cer) == pytest.approx(100 * result["cer"], abs=0.006)
        assert f"{100 * result['wer']:.2f}" == wer


def test_mini_quick_runs_every_stage_and_skips_on_rerun(tmp_path):
    data, exp = tmp_path / "data", tmp_path / "exp"
    script = REPO / "recipes/mini/run.sh"
    r = _run(script, "--quick", "--data-dir", data, "--exp-dir", exp, "--real-speech", tmp_path / "none")
    for n in range(8):
        assert (exp / ".done" / f"stage-{n}.done").is_file(), f"stage {n} left no marker"
    check_results_table(r.stdout, exp, {p: data / "manifests" / f"{p}.jsonl" for p in ("dev", "test", "test-voice")})
    assert (exp / "final" / "model.pt").is_file() and (exp / "final" / "tokenizer.model").is_file()
    for part in ("dev", "test", "test-voice"):
        assert (exp / "score" / part / "wer.txt").is_file()
    # LibriSpeech layout of the synthetic corpus.
    flacs = list((data / "corpus" / "train-clean").glob("*/*/*-*-*.flac"))
    assert flacs and (data / "corpus" / "SPEAKERS.TXT").is_file()
    assert list((data / "corpus" / "test-voice").glob("*/*/*-*-*.flac"))

    r = _run(script, "--quick", "--data-dir", data, "--exp-dir", exp, "--real-speech", tmp_path / "none",
             "--stop-stage", "6")
    assert r.stderr.count("already done, skipping") == 7, r.stderr[-2000:]


# Takes per speaker and digit: an official test take (0-4), two training takes, a dev take (45-49).
FSDD_TAKES = (0, 5, 6, 45)


def _fsdd_layout(folder: Path) -> tuple[Path, list[str]]:
    """A small folder of FSDD-named recordings ({digit}_{speaker}_{take}.wav) of two speakers: links to
    the real recordings when the shared data is present, else flite speech (voices slt and kal16) with
    a little noise so that no two takes are the same samples."""
    folder.mkdir()
    real = shared_data("fsdd")
    if real is not None:
        real = real / "recordings" if (real / "recordings").is_dir() else real
        speakers = sorted({p.name.split("_")[1] for p in real.glob("*_*_*.wav")})[:2]
        for d in range(10):
            for s in speakers:
                for t in FSDD_TAKES:
                    (folder / f"{d}_{s}_{t}.wav").symlink_to(real / f"{d}_{s}_{t}.wav")
        return folder, speakers
    rng = np.random.default_rng(0)
    speakers = {"alice": "slt", "bob": "kal16"}
    for d, word in enumerate(DIGITS):
        for s, voice in speakers.items():
            raw = folder / "raw.wav"
            subprocess.run(["flite", "-voice", voice, "-t", word, "-o", str(raw)], check=True, capture_output=True)
            wave, rate = sf.read(raw, dtype="float32")
            raw.unlink()
            for t in FSDD_TAKES:
                noisy = wave + rng.normal(0, 0.003, wave.shape).astype(np.float32)
                sf.write(folder / f"{d}_{s}_{t}.wav", noisy, rate, subtype="PCM_16")
    return folder, list(speakers)


def test_fsdd_quick_from_a_shell_without_the_venv(tmp_path):
    recordings, speakers = _fsdd_layout(tmp_path / "recordings")
    exp = tmp_path / "exp"
    r = _run(REPO / "recipes/fsdd/run.sh", "--quick", "--fsdd-dir", recordings, "--exp-dir", exp,
             "--holdout-speaker", speakers[0], "--nj", 1)
    exp = Path(f"{exp}-quick")
    assert sorted(p.name for p in (exp / ".done").iterdir()) == [f"stage-{n}.done" for n in range(8)]
    manifests = exp / "data" / "manifests"
    # The importer's splits: takes 0-4 test, 45-49 dev, the rest train; the held-out speaker only in test.
    counts = {(split, part): sum(1 for _ in open(manifests / split / f"{part}.jsonl"))
              for split in ("official", "holdout") for part in ("train", "dev", "test")}
    takes = {"test": 1, "train": 2, "dev": 1}  # of FSDD_TAKES, per speaker and digit
    assert counts == {**{("official", p): 2 * 10 * k for p, k in takes.items()},
                      ("holdout", "train"): 10 * (takes["train"] + takes["test"]),
                      ("holdout", "dev"): 10 * takes["dev"], ("holdout", "test"): 10 * len(FSDD_TAKES)}
    held_train = {json.loads(line)["speaker"] for line in open(manifests / "holdout" / "train.jsonl")}
    assert held_train == {speakers[1]}
    check_results_table(r.stdout, exp, {s: manifests / s / "test.jsonl" for s in ("official", "holdout")})
    # Averaging happens once, in stage 5.
    for split in ("official", "holdout"):
        assert (exp / split / "final" / "model.pt").is_file()
        assert not (exp / split / "train" / "average").exists()


def test_recipe_without_a_set_up_environment_says_what_to_run(tmp_path):
    env = {**_env(), "ASR_VENV": str(tmp_path / "no-venv")}
    r = subprocess.run(["bash", str(REPO / "recipes/fsdd/run.sh"), "--quick"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2 and "make setup" in r.stderr and str(tmp_path / "no-venv") in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_librispeech_recipe_on_a_synthetic_corpus_resumes_after_a_failure(tmp_path):
    corpus = tmp_path / "LibriSpeech"
    asr = [sys.executable, "-m", "asr"]
    subprocess.run([*asr, "corpus", "synth", "--out", corpus, "--utterances", "40", "--speakers", "20",
                    "--max-words", "3", "--vocab", "60", "--subsets", "train-clean-100,dev-clean,test-clean",
                    "--seed", "3"], check=True, capture_output=True, timeout=300)
    script = REPO / "recipes/librispeech/run.sh"
    exp = tmp_path / "exp"
    common = ["--data-dir", tmp_path, "--exp-dir", exp, "--test-sets", "dev-clean test-clean",
              "--vocab-size", "40", "--beam", "2"]
    # A broken config makes the training stage fail: it must leave no marker behind.
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  no_such_key: 1\n")
    r = _run(script, *common, "--config", bad, check=False)
    assert r.returncode != 0 and "no_such_key" in r.stderr
    done = exp / ".done"
    assert sorted(p.name for p in done.iterdir()) == [f"stage-{n}.done" for n in range(4)]

    r = _run(script, *common, "--config", REPO / "recipes/librispeech/conf/quick.yaml")
    assert r.stderr.count("already done, skipping") == 4
    assert (done / "stage-7.done").is_file()
    manifests = exp / "data" / "manifests"
    check_results_table(r.stdout, exp, {s: manifests / f"{s}.jsonl" for s in ("dev-clean", "test-clean")})


def test_librispeech_download_fails_clearly_offline(tmp_path):
    # This machine has no route to openslr.org (and the proxy below goes nowhere): stage 0 must stop with
    # a one-line reason, not a traceback. A download that succeeds here means the test did not test.
    r = subprocess.run([sys.executable, str(REPO / "recipes/librispeech/local/download.py"), "--subsets",
                        "dev-clean", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
                            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert r.returncode == 2, f"the download exited {r.returncode}; it must fail offline:\n{r.stderr[-1000:]}"
    assert "Traceback" not in r.stderr and "--data-dir" in r.stderr
