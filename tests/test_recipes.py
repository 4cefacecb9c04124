"""The recipes end to end on tiny corpora: every stage runs, leaves a marker, and is skipped on re-run.

These are the slowest tests (tens of seconds each); they need flite and espeak-ng for the synthetic corpus.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("flite") and shutil.which("espeak-ng")),
                       reason="flite and espeak-ng are needed to synthesise the corpus"),
]


def _env() -> dict:
    env = dict(os.environ)
    # The recipes call `asr` and `python` from PATH: use this interpreter's environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, env=_env(), timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def test_mini_quick_runs_every_stage_and_skips_on_rerun(tmp_path):
    data, exp = tmp_path / "data", tmp_path / "exp"
    script = REPO / "recipes/mini/run.sh"
    r = _run(script, "--quick", "--data-dir", data, "--exp-dir", exp, "--real-speech", tmp_path / "none")
    for n in range(8):
        assert (exp / ".done" / f"stage-{n}.done").is_file(), f"stage {n} left no marker"
    assert "| dev |" in r.stdout and "| test |" in r.stdout and "| test-voice |" in r.stdout, r.stdout[-2000:]
    assert (exp / "RESULTS.md").read_text().count("|") > 10
    assert (exp / "final" / "model.pt").is_file() and (exp / "final" / "tokenizer.model").is_file()
    for part in ("dev", "test", "test-voice"):
        assert (exp / "decode" / part / "hyps.jsonl").stat().st_size > 0
        assert (exp / "score" / part / "wer.txt").is_file()
    # LibriSpeech layout of the synthetic corpus.
    flacs = list((data / "corpus" / "train-clean").glob("*/*/*-*-*.flac"))
    assert flacs and (data / "corpus" / "SPEAKERS.TXT").is_file()
    assert list((data / "corpus" / "test-voice").glob("*/*/*-*-*.flac"))

    r = _run(script, "--quick", "--data-dir", data, "--exp-dir", exp, "--real-speech", tmp_path / "none",
             "--stop-stage", "6")
    assert r.stderr.count("already done, skipping") == 7, r.stderr[-2000:]


def test_librispeech_recipe_on_a_synthetic_corpus_resumes_after_a_failure(tmp_path):
    corpus = tmp_path / "LibriSpeech"
    asr = [sys.executable, "-m", "asr"]
    subprocess.run([*asr, "corpus", "synth", "--out", corpus, "--utterances", "40", "--speakers", "20",
                    "--max-words", "3", "--vocab", "60", "--subsets", "train-clean-100,dev-clean,test-clean",
                    "--seed", "3"], check=True, capture_output=True, env=_env(), timeout=300)
    script = REPO / "recipes/librispeech/run.sh"
    common = ["--data-dir", tmp_path, "--exp-dir", tmp_path / "exp", "--test-sets", "dev-clean test-clean",
              "--vocab-size", "40", "--beam", "2"]
    # A broken config makes the training stage fail: it must leave no marker behind.
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  no_such_key: 1\n")
    r = _run(script, *common, "--config", bad, check=False)
    assert r.returncode != 0 and "no_such_key" in r.stderr
    done = tmp_path / "exp" / ".done"
    assert sorted(p.name for p in done.iterdir()) == [f"stage-{n}.done" for n in range(4)]

    r = _run(script, *common, "--config", REPO / "recipes/librispeech/conf/quick.yaml")
    assert r.stderr.count("already done, skipping") == 4
    assert "| test-clean |" in r.stdout
    assert (done / "stage-7.done").is_file()


def test_librispeech_download_fails_clearly_offline(tmp_path):
    # No network here: stage 0 must stop with a one-line reason, not a traceback.
    r = subprocess.run([sys.executable, str(REPO / "recipes/librispeech/local/download.py"), "--subsets",
                        "dev-clean", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env={**_env(), "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"})
    if r.returncode == 0:
        pytest.skip("the network is reachable here")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--data-dir" in r.stderr
