"""SpecAugment (Park et al., 2019): time warping, frequency masks and time masks on log-mel features.

The module is active only in training mode and draws every random number from torch's global RNG, so
restoring the RNG state on training resume reproduces the same masks. Each utterance in a batch gets its
own warp and masks, all confined to its true length; padding frames are never touched.

Named policies (Park et al. 2019, table 1):

======  ===  ===  ==  ===  ===  ==
policy  W    F    mF  T    p    mT
======  ===  ===  ==  ===  ===  ==
LB      80   27   1   100  1.0  1
LD      80   27   2   100  1.0  2
SM      40   15   2   70   0.2  2
SS      40   27   2   70   0.2  2
======  ===  ===  ==  ===  ===  ==

``adaptive=True`` switches time masking to the adaptive scheme of Park et al. 2020 ("SpecAugment on
large scale datasets"): an utterance of ``n`` frames gets ``min(mT, floor(time_mask_multiplicity * n))``
masks, each at most ``floor(p * n)`` frames wide (no fixed ``T`` cap).

A schedule makes SpecAugment pay within a short training budget: with ``start_step`` and
``ramp_steps`` the augmentation is off until optimizer step ``start_step`` and then grows linearly to
full strength over ``ramp_steps`` steps (every width -- W, F, T, p and the adaptive multiplicity --
scaled by the ramp), so the model first learns to align on clean features, as in the schedules of
Park et al. 2019 (section 3) and 2020. The training loop reports the step with :func:`set_step`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# policy -> (time_warp W, freq_mask_width F, num_freq_masks mF, time_mask_width T, time_mask_ratio p,
# num_time_masks mT)
POLICIES: dict[str, tuple[int, int, int, int, float, int]] = {
    "LB": (80, 27, 1, 100, 1.0, 1),
    "LD": (80, 27, 2, 100, 1.0, 2),
    "SM": (40, 15, 2, 70, 0.2, 2),
    "SS": (40, 27, 2, 70, 0.2, 2),
}
_FIELDS = (
    "time_warp",
    "freq_mask_width",
    "num_freq_masks",
    "time_mask_width",
    "time_mask_ratio",
    "num_time_masks",
)


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment settings.

    A named ``policy`` ("LB", "LD", "SM", "SS") fixes W, F, mF, T, p and mT to the paper's values and
    ignores those fields; ``policy="custom"`` uses the fields as given; ``policy="none"`` disables
    augmentation. :meth:`resolve` returns the effective settings.
    """

    policy: str = "SM"
    time_warp: int = 80  # W: max warp distance in frames
    freq_mask_width: int = 27  # F: max width of one frequency mask, in mel bins
    num_freq_masks: int = 2  # mF
    time_mask_width: int = 100  # T: max width of one time mask, in frames
    num_time_masks: int = 2  # mT
    time_mask_ratio: float = 1.0  # p: a time mask covers at most p * utterance frames
    adaptive: bool = False  # Park et al. 2020 adaptive time masking (see module docstring)
    time_mask_multiplicity: float = 0.04  # p_M of adaptive masking: masks per frame
    mask_value: float = 0.0  # features are mean-normalised before SpecAugment, so 0 is the mean
    start_step: int = 0  # schedule: off before this optimizer step
    ramp_steps: int = 0  # schedule: then linear to full strength over this many steps (0: at once)

    def __post_init__(self) -> None:
        if self.policy not in (*POLICIES, "custom", "none"):
            known = ", ".join([*POLICIES, "custom", "none"])
            raise ValueError(f"unknown SpecAugment policy {self.policy!r} (known: {known})")
        for name in _FIELDS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0.0 <= self.time_mask_ratio <= 1.0:
            raise ValueError(f"time_mask_ratio must be in [0, 1], got {self.time_mask_ratio}")
        if self.time_mask_multiplicity < 0:
            raise ValueError(f"time_mask_multiplicity must be non-negative, got {self.time_mask_multiplicity}")
        if self.start_step < 0 or self.ramp_steps < 0:
            raise ValueError("start_step and ramp_steps must be non-negative")

    def resolve(self) -> SpecAugmentConfig:
        """Return the effective settings: a "custom" config with a named policy's values filled in.

        "none" resolves to a custom config with every mask and the warp switched off.
        """
        if self.policy == "custom":
            return self
        if self.policy == "none":
            values = (0, 0, 0, 0, 0.0, 0)
        else:
            values = POLICIES[self.policy]
        return dataclasses.replace(self, policy="custom", **dict(zip(_FIELDS, values)))

    @property
    def enabled(self) -> bool:
        """Whether any warp or mask can change the features."""
        r = self.resolve()
        freq = r.num_freq_masks > 0 and r.freq_mask_width > 0
        time = r.num_time_masks > 0 and r.time_mask_ratio > 0 and (r.adaptive or r.time_mask_width > 0)
        return r.time_warp > 0 or freq or time

    def strength(self, step: int | None) -> float:
        """Schedule factor in [0, 1] at optimizer ``step``; None (no step known) is full strength."""
        if step is None or step >= self.start_step + self.ramp_steps:
            return 1.0
        if step < self.start_step:
            return 0.0
        return (step - self.start_step + 1) / (self.ramp_steps + 1)

    def scaled(self, strength: float) -> SpecAugmentConfig:
        """The resolved settings with every width scaled by ``strength`` (mask counts kept)."""
        r = self.resolve()
        if strength >= 1.0:
            return r
        return dataclasses.replace(
            r, time_warp=int(r.time_warp * strength), freq_mask_width=int(r.freq_mask_width * strength),
            time_mask_width=int(r.time_mask_width * strength), time_mask_ratio=r.time_mask_ratio * strength,
            time_mask_multiplicity=r.time_mask_multiplicity * strength)


def set_step(model: nn.Module, step: int) -> None:
    """Tell every SpecAugment inside ``model`` the optimizer step, for its schedule."""
    for m in model.modules():
        if isinstance(m, SpecAugment):
            m.set_step(step)


class SpecAugment(nn.Module):
    """Time warp, frequency masks and time masks, per utterance, in training mode only.

    ``forward(feats (batch, frames, n_mels), lengths (batch,)) -> feats (batch, frames, n_mels)``;
    in eval mode (or with policy "none") the input is returned unchanged.
    """

    def __init__(self, cfg: SpecAugmentConfig | None = None):
        super().__init__()
        self.full = (cfg or SpecAugmentConfig()).resolve()
        self.cfg = self.full.scaled(self.full.strength(None))
        self.step: int | None = None

    def set_step(self, step: int) -> None:
        """Apply the schedule at optimizer ``step`` (a plain attribute: the trainer sets it every batch)."""
        if step != self.step:
            self.step = step
            self.cfg = self.full.scaled(self.full.strength(step))

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """Augment a padded batch.

        Args:
            feats: (batch, frames, n_mels) features.
            lengths: (batch,) long valid frames per utterance.
        Returns:
            (batch, frames, n_mels) augmented copy (the input itself when not training).
        """
        if not self.training or not self.cfg.enabled or feats.numel() == 0:
            return feats
        lengths = lengths.to(device=feats.device, dtype=torch.long).clamp(max=feats.shape[1])
        if self.cfg.time_warp > 0:
            feats = time_warp(feats, lengths, self.cfg.time_warp)
        batch, frames, n_mels = feats.shape
        time_mask = self._time_mask(lengths, frames)  # (batch, frames)
        freq_mask = self._freq_mask(batch, n_mels, feats.device)  # (batch, n_mels)
        valid = torch.arange(frames, device=feats.device)[None, :] < lengths[:, None]
        # frequency bands span all frames, so confine them to the real ones
        mask = time_mask[:, :, None] | (freq_mask[:, None, :] & valid[:, :, None])
        return feats.masked_fill(mask, self.cfg.mask_value)

    def _freq_mask(self, batch: int, n_mels: int, device: torch.device) -> Tensor:
        """(batch, n_mels) bool, True where masked: mF bands of width U[0, F] each."""
        c = self.cfg
        n = c.num_freq_masks
        if n == 0 or c.freq_mask_width == 0:
            return torch.zeros(batch, n_mels, dtype=torch.bool, device=device)
        max_width = torch.full((batch, n), min(c.freq_mask_width, n_mels), device=device)
        span = torch.full((batch, n), n_mels, device=device)
        return _band_mask(max_width, span, n_mels)

    def _time_mask(self, lengths: Tensor, frames: int) -> Tensor:
        """(batch, frames) bool, True where masked; every mask lies inside its utterance's length."""
        c = self.cfg
        batch = lengths.shape[0]
        n = c.num_time_masks
        if n == 0:
            return torch.zeros(batch, frames, dtype=torch.bool, device=lengths.device)
        cap = torch.floor(c.time_mask_ratio * lengths.double()).long()
        if not c.adaptive:
            cap = cap.clamp(max=c.time_mask_width)
        max_width = cap[:, None].expand(batch, n).clone()
        if c.adaptive:
            count = torch.floor(c.time_mask_multiplicity * lengths.double()).long().clamp(max=n)
            max_width[torch.arange(n, device=lengths.device)[None, :] >= count[:, None]] = 0
        return _band_mask(max_width, lengths[:, None].expand(batch, n), frames)


def _band_mask(max_width: Tensor, span: Tensor, size: int) -> Tensor:
    """Union of random bands, one per (row, mask).

    Each band has width ``w ~ U{0..max_width}`` and start ``s ~ U{0..span - w}``, so it ends by ``span``.

    Args:
        max_width: (batch, masks) long, max band width (0 disables the band).
        span: (batch, masks) long, the band must end at or before this index.
        size: length of the masked axis.
    Returns:
        (batch, size) bool.
    """
    max_width = torch.minimum(max_width, span)
    width = torch.floor(torch.rand(max_width.shape, device=max_width.device) * (max_width + 1)).long()
    start = torch.floor(torch.rand(max_width.shape, device=max_width.device) * (span - width + 1)).long()
    pos = torch.arange(size, device=max_width.device)[None, None, :]
    bands = (pos >= start[:, :, None]) & (pos < (start + width)[:, :, None])
    return bands.any(dim=1)


def time_warp(feats: Tensor, lengths: Tensor, max_warp: int) -> Tensor:
    """Warp each utterance along time, piecewise-linearly, inside its own length.

    A centre frame ``c ~ U{W + 1 .. n - 2 - W}`` moves to ``c + w`` with ``w ~ U{-W .. W}``, where
    ``W = min(max_warp, (n - 3) // 2)``; frames ``[0, c]`` are stretched or squeezed linearly onto
    ``[0, c + w]`` and frames ``[c, n - 1]`` onto ``[c + w, n - 1]``, so the first and last frames stay.
    Utterances too short to warp (n < 5), and all padding frames, are copied unchanged.

    Args:
        feats: (batch, frames, n_mels).
        lengths: (batch,) long valid frames.
        max_warp: W, the largest warp distance in frames.
    Returns:
        (batch, frames, n_mels) warped features.
    """
    batch, frames, _ = feats.shape
    device = feats.device
    n = lengths.clamp(max=frames).double()
    # The first and last frames stay put, so both warped segments keep at least one frame:
    # centre in [W + 1, n - 2 - W] and distance in [-W, W] put the destination in [1, n - 2].
    w_max = torch.clamp(torch.minimum(torch.full_like(n, max_warp), torch.floor((n - 3) / 2)), min=0)
    span = (n - 2 - 2 * w_max).clamp(min=1)
    centre = w_max + 1 + torch.floor(torch.rand(batch, device=device, dtype=torch.float64) * span)
    dist = torch.floor(torch.rand(batch, device=device, dtype=torch.float64) * (2 * w_max + 1)) - w_max
    dest = centre + dist
    j = torch.arange(frames, device=device, dtype=torch.float64)[None, :]
    c, d, nn_ = centre[:, None], dest[:, None], n[:, None]
    left = j * c / d.clamp(min=1)
    right = c + (j - d) * (nn_ - 1 - c) / (nn_ - 1 - d).clamp(min=1)
    src = torch.where(j < d, left, right)
    active = (w_max[:, None] > 0) & (j < nn_)
    src = torch.where(active, src, j).clamp(min=0)
    src = torch.minimum(src, torch.where(active, nn_ - 1, torch.full_like(src, frames - 1)))
    lo = src.floor().long()
    hi = torch.minimum(lo + 1, torch.where(active, nn_ - 1, torch.full_like(src, frames - 1)).long())
    frac = (src - lo.double()).to(feats.dtype)[:, :, None]
    # whole-frame row copies (index_select) are far cheaper than an element-wise gather
    offset = (torch.arange(batch, device=device) * frames)[:, None]
    rows = feats.reshape(batch * frames, -1)
    at_lo = rows.index_select(0, (lo + offset).flatten()).view_as(feats)
    at_hi = rows.index_select(0, (hi + offset).flatten()).view_as(feats)
    return torch.lerp(at_lo, at_hi, frac)
