"""Unsupervised speaker adaptation: a per-speaker affine feature transform fitted to first-pass hypotheses.

The neural counterpart of Kaldi's two-pass fMLLR decoding. The first pass decodes all of a speaker's
utterances. Then an affine transform of the normalised features that the listener reads,
``x + x @ A.T + b`` (starting from the identity), is fitted by gradient descent on the model's own
training loss (joint CTC and attention,
label smoothing included), with those hypotheses as targets. The model's weights stay frozen. The second
pass decodes the speaker again through the transform. No transcript is used. For an unseen voice the
transform can reweight and mix mel bands, and a warp of the filterbank (:mod:`asr.vtln`) can only move them.

Cost: ``epochs`` forward and backward passes over the speaker's audio, plus the second decoding pass.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from asr.model import lengths_to_mask
from asr.vtln import sample_evenly

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptConfig:
    """How one speaker's transform is fitted (chosen on the mini recipe's dev set; recipes/mini/README.md)."""

    epochs: int = 3  # passes over the fitted utterances (greedy dev WER, 1.0 kept: 3 -> 4.63, 6 -> 4.87)
    lr: float = 1e-3  # Adam (3e-3: greedy dev WER 5.40)
    batch_utts: int = 8  # utterances per step
    max_utts: int = 400  # at most this many of the speaker's utterances, spread evenly, are fitted on
    seed: int = 0  # the order of the utterances
    rounds: int = 1  # decode, fit; with 2, decode through the transform and fit again on the new hypotheses
    # Fit on this fraction of the speaker's hypotheses, the most confident ones. On the mini dev set
    # (make-demo model, 5.16% WER without adaptation): 1.0 -> 4.73, 0.7 -> 4.53, 0.5 -> 3.66, 0.3 -> 5.30.
    keep_fraction: float = 0.5
    # Entropy minimisation (as in TENT and SUTA) on the utterances left out of the fit: each step adds this
    # weight times the mean per-frame entropy of the CTC posteriors of batch_utts of them, so the less
    # confident half still pulls the transform toward features the model is sure about. It only pays
    # when the first pass is mostly right, so it is off by default and the mini recipe sets 100. Mini
    # dev / dev-voice WER (first pass ~5%), mean over three trained models: 0 -> 5.11, 100 -> 4.33,
    # 300 -> 4.48 (recipes/mini/README.md, "Three trained models"). Natural-sentence dev with LM (first pass
    # ~40%): 0 -> 38.87, 30 -> 40.27, 300 -> 46.20; FSDD, one word per utterance, LOSO mean 12.13 -> 35.10
    # at 300: the model grows sure of its wrong words. A model without a CTC head skips it.
    entropy_weight: float = 0.0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_utts < 1 or self.max_utts < 1 or self.rounds < 1:
            raise ValueError("adapt epochs, batch_utts, max_utts and rounds must be >= 1")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"adapt keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if not self.lr > 0:
            raise ValueError(f"adapt lr must be > 0, got {self.lr}")
        if not self.entropy_weight >= 0:
            raise ValueError(f"adapt entropy_weight must be >= 0, got {self.entropy_weight}")


@dataclass(frozen=True)
class FeatureTransform:
    """``x -> x + x @ matrix.T + bias`` on (..., n_mels) features: the identity when both are zero.

    Applied (:meth:`applied`) to what the listener reads: the features after the model's own mean and
    variance normalisation, which are near zero-mean and unit-variance whatever the CMN mode. On raw log-mel
    (means near -5 with a global-CMVN model) every entry of ``matrix`` acted as a bias as well, and one
    Adam step moved the features by tenths of a standard deviation: measured, it took the FSDD official
    split from 1.33% to 22.67% WER.
    """

    matrix: Tensor  # (n_mels, n_mels)
    bias: Tensor  # (n_mels,)

    def __call__(self, x: Tensor) -> Tensor:
        return x + x @ self.matrix.T + self.bias

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """Within this context ``model`` (an ``asr.model.LAS``) passes its normalised features through the
        transform before its listener (after SpecAugment, which only runs in training mode)."""

        def pre_hook(_module, args):
            return (self(args[0]), *args[1:])

        handle = model.listener.register_forward_pre_hook(pre_hook)
        try:
            yield
        finally:
            handle.remove()


@dataclass(frozen=True)
class AdaptResult:
    """A fitted transform and the pseudo-label loss per utterance of the first and the last epoch."""

    transform: FeatureTransform
    first_loss: float
    last_loss: float
    num_utts: int


def most_confident(results: Sequence[dict], fraction: float) -> list[dict]:
    """The ``fraction`` of decode ``results`` (dicts with ``tokens`` and ``log_prob``) whose hypotheses have
    the highest log-probability per token, in their given order (at least one when there is any).

    A hypothesis that several results share (a spoken digit, a command word) is a class: the most confident
    ``fraction`` of each such class is kept, and the results whose hypothesis is unique compete among
    themselves. Ranked all together, one-word utterances left whole classes out (an FSDD speaker's most
    confident half of 50 digits held no EIGHT, FIVE or THREE), and the transform then learnt to turn
    every word into the others.
    """
    if fraction >= 1.0 or not results:
        return list(results)
    confidence = [r["log_prob"] / (len(r["tokens"]) + 1) for r in results]
    classes: dict[tuple, list[int]] = {}
    for i, r in enumerate(results):
        classes.setdefault(tuple(r["tokens"]), []).append(i)
    pools = [c for c in classes.values() if len(c) > 1]
    pools.append([c[0] for c in classes.values() if len(c) == 1])
    chosen: set[int] = set()
    for pool in pools:
        if pool:
            n = max(1, round(fraction * len(pool)))
            chosen.update(sorted(pool, key=lambda i: -confidence[i])[:n])
    return [r for i, r in enumerate(results) if i in chosen]


def _batch(feats: Sequence[Tensor], targets: Sequence[Sequence[int]], idx: Sequence[int], device: torch.device):
    from asr.tokenizer import IGNORE_ID

    lengths = torch.tensor([feats[i].size(0) for i in idx], device=device)
    x = torch.nn.utils.rnn.pad_sequence([feats[i] for i in idx], batch_first=True)
    target_lengths = torch.tensor([len(targets[i]) for i in idx], device=device)
    y = torch.full((len(idx), int(target_lengths.max())), IGNORE_ID, dtype=torch.long, device=device)
    for row, i in enumerate(idx):
        y[row, : len(targets[i])] = torch.as_tensor(targets[i], dtype=torch.long, device=device)
    return x, lengths, y, target_lengths


@contextlib.contextmanager
def _frozen(model: torch.nn.Module):
    """The model's weights without gradients, and cuDNN off (its RNN backward needs training mode, and
    training mode would switch dropout and SpecAugment on)."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.backends.cudnn.flags(enabled=False):
            yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _ctc_entropy(model: torch.nn.Module, feats: Sequence[Tensor], idx: Sequence[int], device: torch.device) -> Tensor:
    """Mean entropy per valid encoder frame of the CTC posteriors of ``feats[idx]``: a scalar."""
    x = torch.nn.utils.rnn.pad_sequence([feats[i] for i in idx], batch_first=True)
    enc, enc_lengths = model.encode(x, torch.tensor([feats[i].size(0) for i in idx], device=device))
    log_probs = model.ctc_log_probs(enc)
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # (B, T')
    mask = lengths_to_mask(enc_lengths, entropy.size(1))
    return (entropy * mask).sum() / mask.sum().clamp(min=1)


def fit_transform(model: torch.nn.Module, feats: Sequence[Tensor], targets: Sequence[Sequence[int]],
                  cfg: AdaptConfig = AdaptConfig(), unlabelled: Sequence[Tensor] = ()) -> AdaptResult:
    """Fit a :class:`FeatureTransform` so that ``model`` (an ``asr.model.LAS`` in eval mode) finds
    ``targets`` likely, and is sure of itself on ``unlabelled``.

    feats: per utterance (T_i, n_mels), what ``model.encode`` takes (for a speaker-CMN model, minus the
    speaker's mean); targets: per utterance, token ids without SOS/EOS (the first-pass hypotheses).
    Utterances with no tokens are left out. Raises ValueError when none is left. unlabelled: more of the
    speaker's utterances, (T_j, n_mels) each, whose CTC entropy is minimised with weight
    ``cfg.entropy_weight`` (the ones whose hypotheses were not trusted).
    """
    keep = [i for i, t in enumerate(targets) if len(t)]
    if not keep:
        raise ValueError("no non-empty hypotheses to adapt to")
    keep = sample_evenly(keep, cfg.max_utts)
    device = feats[keep[0]].device
    n = feats[keep[0]].size(-1)
    matrix = torch.zeros(n, n, device=device, requires_grad=True)
    bias = torch.zeros(n, device=device, requires_grad=True)
    transform = FeatureTransform(matrix, bias)
    opt = torch.optim.Adam([matrix, bias], lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    use_entropy = cfg.entropy_weight > 0 and len(unlabelled) > 0 and getattr(model, "ctc", None) is not None
    was_training = model.training
    model.eval()
    losses: list[float] = []
    with _frozen(model), torch.enable_grad(), transform.applied(model):
        for _ in range(cfg.epochs):
            total, count = 0.0, 0
            order = [keep[i] for i in rng.permutation(len(keep))]
            for s in range(0, len(order), cfg.batch_utts):
                idx = order[s : s + cfg.batch_utts]
                x, lengths, y, y_lengths = _batch(feats, targets, idx, device)
                label_loss = model(x, lengths, y, y_lengths).loss
                loss = label_loss
                if use_entropy:
                    pick = rng.integers(len(unlabelled), size=min(cfg.batch_utts, len(unlabelled)))
                    loss = loss + cfg.entropy_weight * _ctc_entropy(model, unlabelled, pick.tolist(), device)
                if not torch.isfinite(loss):
                    continue  # one pathological hypothesis must not wreck the transform
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(label_loss.detach()) * len(idx)
                count += len(idx)
            losses.append(total / max(count, 1))
    model.train(was_training)
    fitted = FeatureTransform(matrix.detach().clone(), bias.detach().clone())
    return AdaptResult(fitted, losses[0], losses[-1], len(keep))
