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
