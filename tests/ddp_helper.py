"""Run by tests/test_ddp.py under ``python -m torch.distributed.run --nproc-per-node 2``.

Each rank takes an unequal share of one fixed global batch (rank 0: 3 utterances, rank 1: 1), runs
:func:`asr.train.loop.train_step` (the trainer's DDP loss weighting and gradient all-reduce), and
rank 0 saves the averaged gradients and the per-rank losses to ``argv[1]``.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist


def global_batch(n_mels: int):
    """Four random utterances of different lengths; the same on every rank (fixed seed)."""

    g = torch.Generator().manual_seed(123)
    items = []
    for i, (frames, n_tok) in enumerate([(70, 4), (55, 3), (90, 5), (40, 2)]):
        items.append({"feats": torch.randn(frames, n_mels, generator=g),
                      "tokens": torch.randint(3, 12, (n_tok,), generator=g).tolist(),
                      "id": f"u{i}", "text": "", "speaker": ""})
    return items


def build(exp_config, d):
    """Model (seed 0, identical on all ranks), wrapped like the trainer does, in a Run."""
    from pathlib import Path

    from asr import checkpoint as ckpt
    from asr.train import Run, TrainState
    from asr.train.data import Data
    from asr.train.distributed import wrap_ddp
    from asr.train.metrics import MetricsLog
    from asr.train.step import StepContext, build_optimizer

    torch.manual_seed(0)
    model = wrap_ddp(ckpt.build_las(exp_config), d)
    ctx = StepContext(model, build_optimizer(model, exp_config.train), exp_config.train, d)
    data = Data(None, None, None, None, None, [], batches_per_epoch=1)
    tmp = Path(".")
    return Run(exp_config, data, ctx, TrainState(), tmp, MetricsLog(tmp, False, False, None))


def tiny_exp_config():
    from asr.config import ExperimentConfig

    return ExperimentConfig.from_sections({
        "features": {"n_mels": 16},
        "model": {"vocab_size": 12, "n_mels": 16, "listener_hidden": 16, "pyramid_layers": 1, "dropout": 0.0,
                  "attention_dim": 16, "location_channels": 2, "location_kernel": 5, "embed_dim": 8,
                  "decoder_hidden": 16, "decoder_dropout": 0.0, "label_smoothing": 0.0},
        "specaug": {"policy": "none"},
    }, "ddp-test")


def main(out: str) -> None:
    from asr.data.dataset import collate
    from asr.train import setup_distributed
    from asr.train.loop import train_step

    torch.set_num_threads(1)
    d = setup_distributed()
    cfg = tiny_exp_config()
    trainer = build(cfg, d)
    items = global_batch(cfg.features.n_mels)
    mine = items[:3] if d.rank == 0 else items[3:]
    stats = train_step(trainer, collate(mine), 1, sync=True)
    losses: list = [None] * d.world_size
    dist.all_gather_object(losses, (stats["loss"], stats["utts"]))
    if d.rank == 0:
        grads = {n: p.grad.detach().clone() for n, p in trainer.ctx.model.module.named_parameters()
                 if p.grad is not None}
        torch.save({"grads": grads, "losses": losses, "world_size": d.world_size}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
