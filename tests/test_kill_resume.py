"""SIGKILL `asr train` at random moments (some inside a checkpoint write), resume each time.

The resumed run must end with exactly the parameters of an uninterrupted run, and no kill may leave a
checkpoint that passes its checksum but is damaged. The child runs through tests/slow_checkpoint_helper.py,
which makes :func:`asr.checkpoint.save_checkpoint` pause between writing the temporary file and renaming
it, so the test can kill inside that window.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from asr import checkpoint as ckpt
from asr.config import replace
from asr.data.manifest import write_manifest
from asr.train import train

HELPER = Path(__file__).resolve().parent / "slow_checkpoint_helper.py"
KILLS = 5
MAX_STEPS = 40  # more than 5 launches (each killed 1-3 updates in, plus <= 0.1 s) can reach


def _config(tiny_config):
    cfg = tiny_config(max_steps=MAX_STEPS, checkpoint_every_steps=1, keep_checkpoints=3, max_duration=3.0,
                      dev_wer_utts=2, warmup_steps=2)
    model = replace(cfg.model, dropout=0.2, decoder_dropout=0.2)
    return dataclasses.replace(cfg, model=model, specaug=replace(cfg.specaug, policy="LD"))


def _newest_step(folder: Path, above: int = -1) -> int:
    # Hash only checkpoints newer than ``above`` so that polling does not steal the trainer's CPU;
    # _check_checkpoints does the full load.
    for path in reversed(ckpt.list_checkpoints(folder)):
        step = ckpt.checkpoint_step(path)
        if step <= above:
            break
        if ckpt.checksum_path(path).exists() and ckpt.is_intact(path):
            return step
    return above


def _writing(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith(".ckpt-") and p.name.endswith(".tmp") for p in folder.iterdir())


def _wait(proc: subprocess.Popen, cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError("training made no progress in time")


def _check_checkpoints(folder: Path) -> None:
    for path in ckpt.list_checkpoints(folder):
        if ckpt.checksum_path(path).exists():
            ckpt.load_checkpoint(path)  # a checksummed checkpoint must always load
    assert ckpt.newest_intact_checkpoint(folder) is not None


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tiny_corpus, tiny_config, tmp_path):
    dev = tmp_path / "dev.jsonl"
    write_manifest(dev, tiny_corpus.utts[:3])
    cfg = _config(tiny_config)
    reference = train(cfg, tiny_corpus.manifest, dev, tiny_corpus.tokenizer_path, tmp_path / "ref")
    conf = tmp_path / "conf.yaml"
    conf.write_text(cfg.to_yaml())
    exp = tmp_path / "killed"
    folder = exp / "checkpoints"
    args = ["train", "--config", str(conf), "--train-manifest",
           str(tiny_corpus.manifest), "--valid-manifest", str(dev), "--tokenizer", str(tiny_corpus.tokenizer_path),
           "--exp-dir", str(exp), "--cmvn", str(tmp_path / "ref" / "cmvn.json")]
    cmd = [sys.executable, "-m", "asr", *args]
    rng = random.Random(0)
    kills = mid_write = 0
    while kills < KILLS:
        during_write = kills % 2 == 1
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        before = _newest_step(folder)
        slow = [sys.executable, str(HELPER), "0.4" if during_write else "0.02", *args]
        proc = subprocess.Popen(slow + (["--resume"] if before >= 0 else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # Let it run 1-3 updates, so the kills spread over the run (epoch ends, validations).
            target = before + 1 + rng.randint(0, 2)
            alive = _wait(proc, lambda b=before, t=target: _newest_step(folder, b) >= t, 120)
            if alive and during_write:
                alive = _wait(proc, lambda: _writing(folder), 60)
                mid_write += alive
            elif alive:
                time.sleep(rng.uniform(0.0, 0.1))
            if not alive or proc.poll() is not None:
                break  # finished before we could kill it: there were fewer steps than kills
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _check_checkpoints(folder)
    assert kills == KILLS and mid_write >= 2, f"only {kills} kills ({mid_write} mid-write) before training ended"

    done = subprocess.run(cmd + ["--resume"], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_checkpoints(folder)
    assert not any(p.name.endswith(".tmp") for p in folder.iterdir()), "stale temporary files were left"
    a = ckpt.load_checkpoint(reference.final_dir / "model.pt")["model"]
    b = ckpt.load_checkpoint(exp / "final" / "model.pt")["model"]
    assert ckpt.checkpoint_step(ckpt.list_checkpoints(folder)[-1]) == MAX_STEPS
    for name in a:
        assert torch.equal(a[name], b[name]), name
