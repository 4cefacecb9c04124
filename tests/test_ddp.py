"""DDP on 2 CPU processes (gloo) gives the loss and gradients of one process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    sys.path.insert(0, str(HERE))
    try:
        import ddp_helper
    finally:
        sys.path.remove(str(HERE))
    from asr.data.dataset import collate
    from asr.train import Dist
    from asr.train.loop import train_step

    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "ddp_helper.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["world_size"] == 2

    cfg = ddp_helper.tiny_exp_config()
    single = ddp_helper.build(cfg, Dist())
    stats = train_step(single, collate(ddp_helper.global_batch(cfg.features.n_mels)), 1, sync=True)
    (l0, n0), (l1, n1) = ddp["losses"]
    assert (n0, n1) == (3, 1)
    assert (n0 * l0 + n1 * l1) / (n0 + n1) == pytest.approx(stats["loss"], rel=1e-5)
    grads = {n: p.grad for n, p in single.ctx.model.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp["grads"].keys()
    for name, g in grads.items():
        torch.testing.assert_close(ddp["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert any(g.abs().max() > 0 for g in grads.values())


def _torchrun_train(tiny_corpus, conf: Path, dev: Path, exp: Path, max_steps: int, resume: bool, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "asr",
           "train", "--config", str(conf), "--train-manifest", str(tiny_corpus.manifest), "--valid-manifest",
           str(dev), "--tokenizer", str(tiny_corpus.tokenizer_path), "--exp-dir", str(exp),
           "-o", f"train.max_steps={max_steps}"] + (["--resume"] if resume else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_cli_train_and_resume_two_ranks(tiny_corpus, tmp_path):
    """`torchrun -m asr train` on 2 gloo ranks, then `--resume`: one set of files, written by rank 0."""
    import csv

    import yaml

    from asr import checkpoint as ckpt
    from asr.data.manifest import write_manifest

    sys.path.insert(0, str(HERE))
    try:
        import ddp_helper
    finally:
        sys.path.remove(str(HERE))
    sections = ddp_helper.tiny_exp_config().to_sections()
    sections["train"].update(max_duration=3.0, num_buckets=2, num_workers=0, num_threads=1, dev_wer_utts=2,
                             warmup_steps=2, log_every=1, checkpoint_every_steps=0, plots=False,
                             tensorboard=False)
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump({k: sections[k] for k in ("features", "model", "train")}))
    dev = tmp_path / "dev.jsonl"
    write_manifest(dev, tiny_corpus.utts[:2])
    exp = tmp_path / "exp"

    first = _torchrun_train(tiny_corpus, conf, dev, exp, 2, False, tmp_path)
    assert first.stdout.count("train: 2 steps") == 1  # rank 1 prints nothing
    second = _torchrun_train(tiny_corpus, conf, dev, exp, 4, True, tmp_path)
    assert second.stdout.count("train: 4 steps") == 1

    steps = [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(exp / "checkpoints")]
    assert steps[0] == 2 and steps[-1] == 4
    newest = ckpt.load_checkpoint(ckpt.list_checkpoints(exp / "checkpoints")[-1])
    assert newest["state"]["step"] == 4 and len(newest["rng"]) == 2  # both ranks' RNG states
    log = (exp / "train.log").read_text()
    assert "resumed from" in log and "ckpt-2.pt" in log
    assert "on rank 0 of 2" in log and "on rank 1 of 2" not in log  # only rank 0 writes the log
    with open(exp / "metrics.csv", newline="") as f:
        train_steps = [int(r["step"]) for r in csv.DictReader(f) if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4]  # one row per update: rank 1 wrote none, the resume none twice
    assert not list(tmp_path.glob("*.pt")) and not (tmp_path / "metrics.csv").exists()
    ckpt.load_las(exp / "final")
