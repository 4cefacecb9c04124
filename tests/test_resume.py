"""Exact resume: N steps, stop, resume for N more equals 2N uninterrupted steps, bit for bit.

Dropout and SpecAugment are on, so the result only matches if the RNG states are restored, and the stop
falls in the middle of an epoch, so it only matches if the sampler continues where it stopped.
"""

from __future__ import annotations

import dataclasses

import torch

from asr import checkpoint as ckpt
from asr.config import replace
from asr.data.manifest import write_manifest
from asr.train import train


def _noisy(cfg):
    model = replace(cfg.model, dropout=0.3, decoder_dropout=0.3, sampling_prob=0.2)
    return dataclasses.replace(cfg, model=model, specaug=replace(cfg.specaug, policy="LD"))


def test_resume_equals_uninterrupted(tiny_corpus, tiny_config, tmp_path):
    dev = tmp_path / "dev.jsonl"
    write_manifest(dev, tiny_corpus.utts[:3])
    common = dict(max_duration=3.0, checkpoint_every_steps=0, dev_wer_utts=2, warmup_steps=2)
    n = 4
    args = (tiny_corpus.manifest, dev, tiny_corpus.tokenizer_path)

    full = train(_noisy(tiny_config(max_steps=2 * n, **common)), *args, tmp_path / "full")
    half = train(_noisy(tiny_config(max_steps=n, **common)), *args, tmp_path / "split")
    state = ckpt.load_checkpoint(tmp_path / "split" / "checkpoints" / f"ckpt-{n}.pt")
    assert state["state"]["batches_in_epoch"] > 0, "the stop should fall inside an epoch"
    resumed = train(_noisy(tiny_config(max_steps=2 * n, **common)), *args, tmp_path / "split", resume=True)
    assert (half.steps, resumed.steps, full.steps) == (n, 2 * n, 2 * n)

    a = ckpt.load_checkpoint(full.final_dir / "model.pt")["model"]
    b = ckpt.load_checkpoint(resumed.final_dir / "model.pt")["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # Training moved the weights: equality is not the trivial "nothing happened".
    first = ckpt.load_checkpoint(tmp_path / "split" / "checkpoints" / f"ckpt-{n}.pt")["model"]
    assert any(not torch.equal(first[k], a[k]) for k in a if a[k].is_floating_point())
    # metrics.csv of the resumed run holds each step once, like the uninterrupted one.
    rows = lambda d: [r for r in (d / "metrics.csv").read_text().splitlines()[1:] if ",train," in r]  # noqa: E731
    assert [r.split(",")[0] for r in rows(tmp_path / "split")] == [r.split(",")[0] for r in rows(tmp_path / "full")]
