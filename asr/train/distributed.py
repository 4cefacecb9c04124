"""Distributed set-up (torchrun: gloo on CPU, nccl on CUDA) and the collectives the loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from asr.train.rng import rng_state


@dataclass
class Dist:
    """Where this process runs: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device | str:
        """Where collective tensors live: the GPU for nccl, the CPU for gloo."""
        return self.device if self.device.type == "cuda" else "cpu"


def setup_distributed() -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, world, local_rank, device)


def wrap_ddp(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """Wrap ``model`` in DistributedDataParallel when running on several ranks."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.device.index] if d.device.type == "cuda" else None
    # LAS builds only the parts its ctc_weight uses, so every parameter gets a gradient every step.
    return DistributedDataParallel(model, device_ids=ids)


def global_count(n: int, d: Dist) -> int:
    """Sum of ``n`` over the ranks."""
    if not d.enabled:
        return n
    t = torch.tensor([n], dtype=torch.long, device=d.comm_device)
    dist.all_reduce(t)
    return int(t.item())


def all_ranks_true(flag: bool, d: Dist) -> bool:
    """True when ``flag`` holds on every rank (every rank must call it)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=d.comm_device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.comm_device)
    dist.broadcast(t, 0)
    return bool(t.item())


def all_reduce_grads(model: torch.nn.Module, d: Dist) -> None:
    """Average the gradients over the ranks by hand.

    Used when the micro-batch that would have triggered DDP's all-reduce was skipped, so that the ranks
    do not drift apart.
    """
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= d.world_size


def gather_rng(d: Dist) -> list:
    """Every rank's :func:`asr.train.rng.rng_state`, in rank order (a collective)."""
    if not d.enabled:
        return [rng_state()]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, rng_state())
    return out


def barrier(d: Dist) -> None:
    """Wait for every rank (no-op in a single process)."""
    if d.enabled:
        dist.barrier()
