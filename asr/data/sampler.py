"""Batches bounded by seconds of audio, drawn from duration buckets, deterministic and resumable.

:class:`DynamicBucketSampler` is a *batch* sampler: it yields lists of dataset indices and is passed to
``torch.utils.data.DataLoader(batch_sampler=...)``. One epoch's plan is a pure function of
``(durations, max_duration, num_buckets, shuffle, seed, epoch, world_size, drop_last)``:

1. Utterances are sorted by duration and cut into ``num_buckets`` buckets of (nearly) equal count, so a
   batch holds utterances of similar length and little of it is padding. Small datasets get fewer
   buckets (each bucket should fill at least 4 batches, as its last batch is part-filled).
2. Each bucket is shuffled from ``(seed, epoch)`` and packed greedily into batches whose durations sum to
   at most ``max_duration``. An utterance longer than ``max_duration`` on its own becomes a batch of one
   (it is never dropped silently; :attr:`DynamicBucketSampler.num_overlong` counts them, and
   :func:`asr.data.dataset.filter_utterances` is the place to remove them beforehand).
3. The batches of all buckets are shuffled together, so consecutive steps see different lengths.
4. Under data parallelism the global list is dealt round-robin: rank ``r`` gets batches ``r, r + W, ...``.
   Every rank must run the same number of steps (or the collective ops hang), so the list is first made
   a multiple of the world size: ``drop_last=True`` trims the remainder, ``drop_last=False`` pads by
   repeating batches from the start of the list (as ``DistributedSampler`` does).

Resuming mid-epoch: a ``DataLoader`` prefetches, so the sampler cannot know how many batches the
trainer has actually consumed. The trainer counts them and saves ``sampler.state_dict(consumed)``;
after ``load_state_dict(state)`` the next ``__iter__`` yields exactly the batches the uninterrupted
run would still have yielded in that epoch, and later epochs are unaffected.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from asr.errors import DataError

log = logging.getLogger(__name__)

STATE_VERSION = 1
MIN_BATCHES_PER_BUCKET = 4


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Fill in rank/world size from torch.distributed when it is initialised, else (0, 1)."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    rank = 0 if rank is None else int(rank)
    world_size = 1 if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


def pack_greedy(indices: np.ndarray, durations: np.ndarray, max_duration: float) -> list[list[int]]:
    """Cut ``indices`` (in order) into consecutive batches whose durations sum to ``<= max_duration``.

    An item longer than ``max_duration`` forms a batch of its own.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0.0
    for i in indices.tolist():
        d = float(durations[i])
        if current and total + d > max_duration:
            batches.append(current)
            current, total = [], 0.0
        current.append(i)
        total += d
    if current:
        batches.append(current)
    return batches


class DynamicBucketSampler:
    """Yield batches of indices with total duration ``<= max_duration`` seconds (see module docstring).

    Parameters
    ----------
    durations: seconds of each dataset item, ``(num_items,)``.
    max_duration: upper bound on the summed seconds of one batch.
    num_buckets: number of equal-count duration buckets; 1 disables bucketing. Lowered so that each
        bucket holds at least ``MIN_BATCHES_PER_BUCKET`` batches' worth of audio.
    shuffle: shuffle within buckets and across batches (from ``(seed, epoch)``); False gives batches in
        increasing-duration order, the same every epoch.
    rank, world_size: this process's share; default from ``torch.distributed`` when initialised, else 0/1.
    drop_last: trim (True) rather than pad by repetition (False) the batches that do not divide evenly
        among ranks. Has no effect with one rank.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_duration: float,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ):
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or len(self.durations) == 0:
            raise DataError("sampler", "needs a non-empty 1-D list of durations")
        if not np.all(np.isfinite(self.durations)) or np.any(self.durations < 0):
            raise DataError("sampler", "durations must be finite and non-negative")
        if not max_duration > 0:
            raise DataError("sampler", f"max_duration must be positive, got {max_duration}")
        if num_buckets < 1:
            raise DataError("sampler", f"num_buckets must be >= 1, got {num_buckets}")
        self.max_duration = float(max_duration)
        # Each bucket ends in one part-filled batch; with at least ~4 full batches per bucket that waste
        # stays small, so tiny datasets get fewer buckets than asked for.
        fits = int(self.durations.sum() // (MIN_BATCHES_PER_BUCKET * self.max_duration))
        self.num_buckets = max(1, min(int(num_buckets), len(self.durations), fits))
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        self.drop_last = drop_last
        self.epoch = 0
        self._skip = 0  # batches of `self.epoch` already consumed before a restart
        # A stable sort keeps equal durations in index order, so the buckets are reproducible.
        order = np.argsort(self.durations, kind="stable")
        self._buckets = [b for b in np.array_split(order, self.num_buckets) if len(b)]
        self.num_overlong = int(np.sum(self.durations > self.max_duration))
        if self.num_overlong:
            log.warning("%d item(s) exceed max_duration=%.1fs and will form single-item batches",
                        self.num_overlong, self.max_duration)
        self._cache: tuple[int, list[list[int]]] | None = None

    # -- plan -----------------------------------------------------------------------------------

    def _global_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch``, before dealing to ranks; identical on every rank."""
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[list[int]] = []
        for bucket in self._buckets:
            idx = rng.permutation(bucket) if self.shuffle else bucket
            batches.extend(pack_greedy(idx, self.durations, self.max_duration))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        """The batches of this rank in ``epoch`` (cached: ``__len__`` and ``__iter__`` share them)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self._global_batches(epoch)
        w = self.world_size
        if len(batches) % w:
            if self.drop_last and len(batches) >= w:
                batches = batches[: len(batches) - len(batches) % w]
            else:
                # Repeat from the start; `i % len` also covers fewer batches than ranks.
                need = w - len(batches) % w
                batches = batches + [batches[i % len(batches)] for i in range(need)]
        mine = batches[self.rank :: w]
        self._cache = (epoch, mine)
        return mine

    # -- sampler protocol -----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan ``__iter__`` yields; a different epoch cancels a pending resume."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches this rank yields in the current epoch (after any resume offset)."""
        return len(self._rank_batches(self.epoch)) - self._skip

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches this rank yields in a whole ``epoch`` (default: the current one), ignoring a resume."""
        return len(self._rank_batches(self.epoch if epoch is None else int(epoch)))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches(self.epoch)
        skip, self._skip = self._skip, 0  # the resume offset applies to one pass only
        for batch in batches[skip:]:
            yield list(batch)

    # -- resume ---------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A hash of everything that determines the plan, so a resume on other data is caught."""
        h = hashlib.sha256()
        h.update(np.round(self.durations, 4).tobytes())
        h.update(repr((self.max_duration, self.num_buckets, self.shuffle, self.drop_last)).encode())
        return h.hexdigest()[:16]

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """State to resume the current epoch after ``consumed`` batches of this rank were trained on.

        ``consumed`` counts from the start of the epoch (including batches skipped by a previous
        resume), as the trainer sees it.
        """
        total = len(self._rank_batches(self.epoch))
        if not 0 <= consumed <= total:
            raise ValueError(f"consumed={consumed} is outside [0, {total}] for epoch {self.epoch}")
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "seed": self.seed,
            "consumed": int(consumed),
            "world_size": self.world_size,
            "fingerprint": self.fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next ``__iter__`` continues the saved epoch where it stopped.

        Raises DataError if the data, the batching settings or the world size differ from the saved run
        (the remaining batches would not be the ones the uninterrupted run would have had).
        """
        try:
            epoch, seed, consumed = int(state["epoch"]), int(state["seed"]), int(state["consumed"])
            world_size, fingerprint = int(state["world_size"]), str(state["fingerprint"])
        except (KeyError, TypeError, ValueError):
            raise DataError("sampler state", "malformed state (expected epoch, seed, consumed, "
                            "world_size, fingerprint)") from None
        if fingerprint != self.fingerprint():
            raise DataError("sampler state", "the dataset or batching settings changed since it was saved")
        if world_size != self.world_size:
            raise DataError("sampler state", f"saved with world_size={world_size}, now {self.world_size}")
        self.seed = seed
        self.epoch = epoch
        self._cache = None
        total = len(self._rank_batches(epoch))
        if not 0 <= consumed <= total:
            raise DataError("sampler state", f"consumed={consumed} is outside [0, {total}]")
        self._skip = consumed
