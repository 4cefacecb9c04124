"""asr.specaugment: policies, per-utterance masks inside true lengths, eval identity, RNG reproducibility."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from asr.config import from_dict
from asr.errors import ConfigError
from asr.specaugment import SpecAugment, SpecAugmentConfig, time_warp

# Park et al. 2019, table 1: W, F, mF, T, p, mT
PAPER = {
    "LB": (80, 27, 1, 100, 1.0, 1),
    "LD": (80, 27, 2, 100, 1.0, 2),
    "SM": (40, 15, 2, 70, 0.2, 2),
    "SS": (40, 27, 2, 70, 0.2, 2),
}
PAD = 7.0  # a value real (mean-normalised) features never take


def padded_ones(lengths: list[int], n_mels: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    lengths_t = torch.tensor(lengths)
    valid = torch.arange(max(lengths))[None, :] < lengths_t[:, None]
    feats = torch.where(valid[:, :, None], torch.ones(()), torch.full((), PAD)).expand(-1, -1, n_mels)
    return feats.contiguous(), lengths_t


def masks_only(policy: str) -> SpecAugment:
    """The policy with time warping off, so masked cells are exactly the zeros of a ones input."""
    cfg = dataclasses.replace(SpecAugmentConfig(policy=policy).resolve(), time_warp=0)
    return SpecAugment(cfg).train()


@pytest.mark.parametrize("policy", list(PAPER))
def test_named_policies_resolve_to_the_paper(policy):
    r = SpecAugmentConfig(policy=policy, time_warp=3, num_time_masks=9).resolve()
    got = (r.time_warp, r.freq_mask_width, r.num_freq_masks, r.time_mask_width, r.time_mask_ratio, r.num_time_masks)
    assert got == PAPER[policy]
    assert r.policy == "custom" and r.resolve() == r


def test_none_and_custom_policies():
    assert not SpecAugmentConfig(policy="none").enabled
    custom = SpecAugmentConfig(policy="custom", time_warp=5, num_freq_masks=1, freq_mask_width=3)
    assert custom.resolve() == custom
    x, lengths = padded_ones([50, 30])
    assert torch.equal(SpecAugment(SpecAugmentConfig(policy="none")).train()(x, lengths), x)


def test_config_validation():
    with pytest.raises(ValueError):
        SpecAugmentConfig(policy="XL")
    with pytest.raises(ValueError):
        SpecAugmentConfig(time_mask_ratio=1.5)
    with pytest.raises(ConfigError):
        from_dict(SpecAugmentConfig, {"policy": "LD", "num_freq_masks": -1}, "specaug")


def test_eval_mode_is_identity():
    x = torch.randn(3, 200, 80)
    lengths = torch.tensor([200, 150, 20])
    aug = SpecAugment(SpecAugmentConfig(policy="LD")).eval()
    assert torch.equal(aug(x, lengths), x)
    aug.train()
    assert not torch.equal(aug(x, lengths), x)


@pytest.mark.parametrize("policy", list(PAPER))
def test_padding_is_never_touched(policy):
    torch.manual_seed(0)
    x, lengths = padded_ones([400, 250, 60, 7, 1])
    aug = SpecAugment(SpecAugmentConfig(policy=policy)).train()
    for _ in range(20):
        y = aug(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            assert torch.all(y[i, n:] == PAD)
            assert not torch.any(y[i, :n] == PAD)  # warping never pulls padding into real frames


@pytest.mark.parametrize("policy", list(PAPER))
def test_masks_follow_policy_bounds(policy):
    torch.manual_seed(1)
    W, F, mF, T, p, mT = PAPER[policy]
    lengths_list = [1000, 400, 120]
    x, lengths = padded_ones(lengths_list)
    aug = masks_only(policy)
    widest_f, widest_t = 0, [0] * len(lengths_list)
    for _ in range(60):
        y = aug(x, lengths)
        for i, n in enumerate(lengths_list):
            real = y[i, :n]
            masked_bins = int((real == 0).all(dim=0).sum())
            masked_frames = int((real == 0).all(dim=1).sum())
            cap = min(T, int(p * n))
            assert masked_bins <= mF * F
            assert masked_frames <= mT * cap
            widest_f = max(widest_f, masked_bins)
            widest_t[i] = max(widest_t[i], masked_frames)
    # the draws actually reach towards their bounds (the masks are not trivially empty)
    assert widest_f > F // 2
    assert all(w > min(T, int(p * n)) // 2 for w, n in zip(widest_t, lengths_list))


def test_single_masks_are_contiguous_bands():
    torch.manual_seed(2)
    x, lengths = padded_ones([300])
    aug = masks_only("LB")  # one frequency and one time mask
    for _ in range(30):
        y = aug(x, lengths)[0]
        for masked in ((y == 0).all(dim=0), (y == 0).all(dim=1)):
            idx = torch.nonzero(masked).flatten()
            if idx.numel():
                assert int(idx[-1] - idx[0]) + 1 == idx.numel()


def test_each_utterance_gets_its_own_masks():
    torch.manual_seed(3)
    x = torch.ones(8, 300, 80)
    y = masks_only("LD")(x, torch.full((8,), 300))
    patterns = {tuple((y[i] == 0).flatten().tolist()) for i in range(8)}
    assert len(patterns) == 8


def test_adaptive_time_masks_scale_with_length():
    cfg = SpecAugmentConfig(
        policy="custom", time_warp=0, num_freq_masks=0, num_time_masks=10,
        time_mask_ratio=0.05, adaptive=True, time_mask_multiplicity=0.02,
    )
    aug = SpecAugment(cfg).train()
    torch.manual_seed(4)
    x, lengths = padded_ones([2000, 120, 40])
    widest = [0, 0, 0]
    for _ in range(50):
        y = aug(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            masked = int((y[i, :n] == 0).all(dim=1).sum())
            count = min(10, int(0.02 * n))
            assert masked <= count * int(0.05 * n)
            widest[i] = max(widest[i], masked)
    assert widest[0] > 100  # long utterance: up to 10 masks of 100 frames
    assert widest[2] == 0  # 40 frames * 0.02 < 1 mask


def test_global_rng_state_reproduces_masks():
    x = torch.randn(4, 300, 80)
    lengths = torch.tensor([300, 200, 100, 50])
    aug = SpecAugment(SpecAugmentConfig(policy="LD")).train()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = aug(x, lengths)
    second = aug(x, lengths)
    torch.set_rng_state(state)
    assert torch.equal(aug(x, lengths), first)
    assert not torch.equal(first, second)


def test_time_warp_is_a_monotone_reparameterisation():
    torch.manual_seed(6)
    lengths = torch.tensor([500, 300, 50, 3])
    ramp = torch.arange(500.0)[None, :, None].repeat(4, 1, 2)
    warped_any = False
    for _ in range(10):
        y = time_warp(ramp, lengths, 80)
        for i, n in enumerate(lengths.tolist()):
            seg = y[i, :n, 0]
            assert torch.all(seg.diff() >= -1e-4)  # order of events is kept
            assert seg[0] == 0 and seg[-1] == n - 1  # endpoints stay
            assert torch.equal(y[i, n:], ramp[i, n:])  # padding copied unchanged
            warped_any |= not torch.allclose(seg, ramp[i, :n, 0])
        assert torch.equal(y[3], ramp[3])  # too short to warp
    assert warped_any
    const = torch.full((2, 100, 5), 3.0)
    assert torch.allclose(time_warp(const, torch.tensor([100, 60]), 20), const)


def test_warp_distance_bounded_by_w():
    torch.manual_seed(7)
    ramp = torch.arange(400.0)[None, :, None].repeat(16, 1, 1)
    y = time_warp(ramp, torch.full((16,), 400), 10)[..., 0]
    # the largest displacement of any frame is at the warp centre and is at most W frames
    assert float((y - ramp[..., 0]).abs().max()) <= 10 + 1e-4


def test_schedule_is_off_then_ramps_to_full_strength():
    from asr.specaugment import set_step

    cfg = SpecAugmentConfig(policy="custom", time_warp=0, freq_mask_width=20, num_freq_masks=2,
                            time_mask_width=30, num_time_masks=2, start_step=10, ramp_steps=4)
    assert [cfg.strength(s) for s in (0, 9, 10, 11, 13, 14, 100)] == [0.0, 0.0, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert cfg.strength(None) == 1.0
    half = cfg.scaled(0.5)
    assert (half.freq_mask_width, half.time_mask_width, half.num_freq_masks) == (10, 15, 2)
    aug = SpecAugment(cfg).train()
    model = torch.nn.Sequential(aug)
    feats = torch.randn(3, 200, 40)
    lengths = torch.tensor([200, 150, 90])
    set_step(model, 5)
    assert torch.equal(aug(feats, lengths), feats)  # off before start_step
    set_step(model, 11)
    torch.manual_seed(0)
    early = (aug(feats, lengths) != feats).sum()
    set_step(model, 50)
    torch.manual_seed(0)
    full = (aug(feats, lengths) != feats).sum()
    assert 0 < early < full  # the same draws, narrower masks
