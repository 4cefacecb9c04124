"""DynamicBucketSampler: duration bound, buckets, ranks, determinism and mid-epoch resume."""

from __future__ import annotations

import numpy as np
import pytest

from asr.data.sampler import DynamicBucketSampler
from asr.errors import DataError


def _durations(n: int = 300, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 12.0, size=n).round(3).tolist()


def _epoch(sampler: DynamicBucketSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batches_respect_max_duration_and_cover_every_item_once():
    durs = _durations()
    s = DynamicBucketSampler(durs, max_duration=40.0, num_buckets=6, seed=1)
    batches = _epoch(s, 0)
    assert len(batches) == len(s)
    for b in batches:
        assert sum(durs[i] for i in b) <= 40.0 + 1e-9
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(durs)))
    # Greedy packing wastes little: most batches are more than half full.
    fill = [sum(durs[i] for i in b) / 40.0 for b in batches]
    assert np.median(fill) > 0.75


def test_overlong_item_forms_its_own_batch():
    durs = [1.0, 2.0, 50.0, 1.5, 3.0]
    s = DynamicBucketSampler(durs, max_duration=10.0, num_buckets=2, seed=0)
    batches = _epoch(s, 0)
    assert [2] in batches
    assert s.num_overlong == 1
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_buckets_group_similar_durations():
    durs = _durations(400, seed=3)
    bucketed = _epoch(DynamicBucketSampler(durs, max_duration=30.0, num_buckets=10, seed=2), 0)
    flat = _epoch(DynamicBucketSampler(durs, max_duration=30.0, num_buckets=1, seed=2), 0)

    def mean_spread(batches):
        return np.mean([max(durs[i] for i in b) - min(durs[i] for i in b) for b in batches if len(b) > 1])

    # The spread within a batch is what becomes padding.
    assert mean_spread(bucketed) < 0.3 * mean_spread(flat)


def test_deterministic_per_seed_and_epoch_and_different_across_epochs():
    durs = _durations()
    a = DynamicBucketSampler(durs, max_duration=30.0, seed=5)
    b = DynamicBucketSampler(durs, max_duration=30.0, seed=5)
    assert _epoch(a, 3) == _epoch(b, 3)
    assert _epoch(a, 0) != _epoch(a, 1)
    c = DynamicBucketSampler(durs, max_duration=30.0, seed=6)
    assert _epoch(c, 3) != _epoch(b, 3)
    # Re-iterating the same epoch gives the same order.
    assert list(a) == list(a)


def test_no_shuffle_is_sorted_by_duration_and_epoch_independent():
    durs = _durations(50)
    s = DynamicBucketSampler(durs, max_duration=20.0, shuffle=False)
    batches = _epoch(s, 0)
    order = [i for b in batches for i in b]
    assert [durs[i] for i in order] == sorted(durs)
    assert _epoch(s, 1) == batches


def test_two_ranks_get_disjoint_complete_batches_of_equal_count():
    durs = _durations(257, seed=4)
    ranks = [DynamicBucketSampler(durs, max_duration=25.0, seed=9, rank=r, world_size=2) for r in range(2)]
    per_rank = [_epoch(s, 7) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[1]) > 0
    sets = [{i for b in batches for i in b} for batches in per_rank]
    total = sum(len(b) for batches in per_rank for b in batches)
    if total == len(durs):  # the batch count happened to be even: a partition, nothing repeated
        assert not sets[0] & sets[1]
    assert sets[0] | sets[1] == set(range(len(durs)))


@pytest.mark.parametrize("drop_last", [False, True])
def test_odd_batch_count_is_padded_or_trimmed_for_two_ranks(drop_last):
    durs = [1.0] * 9  # max_duration 3 -> exactly 3 batches of 3
    per_rank = [_epoch(DynamicBucketSampler(durs, 3.0, seed=1, rank=r, world_size=2, drop_last=drop_last), 0)
                for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    covered = [i for batches in per_rank for b in batches for i in b]
    if drop_last:
        assert len(per_rank[0]) == 1
        assert len(covered) == len(set(covered)) == 6
    else:
        assert len(per_rank[0]) == 2
        assert set(covered) == set(range(9)) and len(covered) == 12


def test_fewer_batches_than_ranks_still_gives_every_rank_a_batch():
    durs = [1.0, 1.0, 1.0]
    counts = [len(_epoch(DynamicBucketSampler(durs, 10.0, rank=r, world_size=4), 0)) for r in range(4)]
    assert counts == [1, 1, 1, 1]


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_mid_epoch_continues_with_the_same_batches(world_size):
    durs = _durations(200, seed=8)
    ref = DynamicBucketSampler(durs, max_duration=20.0, seed=3, rank=world_size - 1, world_size=world_size)
    full = _epoch(ref, 2)
    consumed = len(full) // 3
    state = ref.state_dict(consumed)

    fresh = DynamicBucketSampler(durs, max_duration=20.0, seed=0, rank=world_size - 1, world_size=world_size)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # the trainer's loop sets the epoch again; the offset must survive that
    assert len(fresh) == len(full) - consumed
    assert list(fresh) == full[consumed:]
    # The offset applies to one pass only; the next epoch is the uninterrupted run's next epoch.
    assert _epoch(fresh, 3) == _epoch(ref, 3)


def test_resume_refuses_other_data_or_world_size():
    durs = _durations(60)
    s = DynamicBucketSampler(durs, max_duration=20.0)
    state = s.state_dict(2)
    with pytest.raises(DataError, match="changed"):
        DynamicBucketSampler(durs[:-1], max_duration=20.0).load_state_dict(state)
    with pytest.raises(DataError, match="world_size"):
        DynamicBucketSampler(durs, max_duration=20.0, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(DataError, match="malformed"):
        s.load_state_dict({"epoch": 0})


def test_bad_arguments_raise_data_error():
    with pytest.raises(DataError):
        DynamicBucketSampler([], 10.0)
    with pytest.raises(DataError):
        DynamicBucketSampler([1.0, float("nan")], 10.0)
    with pytest.raises(DataError):
        DynamicBucketSampler([1.0], 0.0)


def test_rank_and_world_size_default_from_torch_distributed(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        s = DynamicBucketSampler(_durations(20), max_duration=10.0)
        assert (s.rank, s.world_size) == (0, 1)
        assert DynamicBucketSampler(_durations(20), 10.0, rank=1, world_size=3).rank == 1
    finally:
        dist.destroy_process_group()
    with pytest.raises(ValueError):
        DynamicBucketSampler(_durations(20), 10.0, rank=2, world_size=2)
