"""Validation: dev loss, token accuracy and greedy WER, scored exactly as ``asr score`` scores."""

from __future__ import annotations

import torch

from asr import checkpoint as ckpt
from asr.train.config import TrainConfig


def greedy_decode(model, feats: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Greedy attention decoding of ``feats (B, T, n_mels)`` with ``lengths (B,)``; token ids without EOS."""
    from asr.decoding import DecodeOptions, search

    enc, enc_lengths = model.encode(feats, lengths)
    return [list(nbest[0].tokens) for nbest in search(model, enc, enc_lengths, DecodeOptions(beam_size=1, ctc_weight=0.0))]


def dev_wer(refs: dict[str, str], hyps: dict[str, str]) -> float:
    """WER of ``hyps`` against ``refs`` (both ``{utt_id: text}``) with :mod:`asr.scoring`'s normalisation.

    References that are blank after normalisation are left out; NaN when none is left.
    """
    from asr.scoring import ScoreOptions, normalize, score

    options = ScoreOptions()
    kept = {uid: text for uid, text in refs.items() if normalize(text, options)}
    if not kept:
        return float("nan")
    return score(kept, hyps, options=options).wer


@torch.no_grad()
def validate(model, dev_set, tokenizer, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Dev loss, token accuracy and greedy WER (on the first ``dev_wer_utts`` utterances).

    Runs in eval mode inside a forked RNG so that validating never changes the training randomness.
    """
    from asr.data.dataset import collate
    from asr.data.sampler import DynamicBucketSampler

    model = ckpt.unwrap_model(model)
    was_training = model.training
    model.eval()
    tot = {"loss": 0.0, "att_loss": 0.0, "ctc_loss": 0.0, "n_correct": 0.0, "n_tokens": 0.0, "utts": 0}
    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    wer_ids = {u.id for u in dev_set.utts[: cfg.dev_wer_utts]}  # a fixed subset, comparable across epochs
    with torch.random.fork_rng(devices=[]):
        sampler = DynamicBucketSampler(dev_set.durations, cfg.max_duration, 1, shuffle=False, rank=0, world_size=1)
        for indices in sampler:
            batch = collate([dev_set[i] for i in indices])
            if len(batch) == 0:
                continue
            batch = batch.to(device)
            out = model(batch.feats, batch.feat_lengths, batch.targets, batch.target_lengths)
            n = len(batch)
            for k in ("loss", "att_loss", "ctc_loss"):
                tot[k] += float(getattr(out, k)) * n
            tot["n_correct"] += float(out.n_correct)
            tot["n_tokens"] += float(out.n_tokens)
            tot["utts"] += n
            wer_sel = [j for j, uid in enumerate(batch.ids) if uid in wer_ids]
            if wer_sel:
                sel = torch.tensor(wer_sel, device=device)
                lens = batch.feat_lengths[sel]
                for j, ids in zip(wer_sel, greedy_decode(model, batch.feats[sel, : int(lens.max())], lens)):
                    refs[batch.ids[j]] = batch.texts[j]
                    hyps[batch.ids[j]] = tokenizer.decode(ids)
    model.train(was_training)
    n = max(1, tot["utts"])
    return {
        "loss": tot["loss"] / n, "att_loss": tot["att_loss"] / n, "ctc_loss": tot["ctc_loss"] / n,
        "acc": tot["n_correct"] / max(1.0, tot["n_tokens"]), "wer": float(dev_wer(refs, hyps)),
    }
