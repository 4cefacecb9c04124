"""Training: overfitting the tiny corpus, the experiment folder, numerical guards, LR schedules, averaging."""

from __future__ import annotations

import math
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch

from asr import checkpoint as ckpt
from asr.checkpoint import average_model
from asr.config import replace
from asr.errors import ConfigError, TrainingDivergedError
from asr.train import Dist, Run, TrainState, get_lr
from asr.train.data import Data
from asr.train.loop import apply_update, train_step
from asr.train.metrics import MetricsLog
from asr.train.step import StepContext, build_optimizer
from asr.train.validate import greedy_decode


def _greedy_wer(model_dir: Path, corpus) -> float:
    from asr.data.dataset import AsrDataset, collate

    model, tok, cfg = ckpt.load_las(model_dir)
    ds = AsrDataset(corpus.utts, tok, cfg.features)
    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        hyps = [tok.decode(ids) for ids in greedy_decode(model, batch.feats, batch.feat_lengths)]
    return jiwer.wer(list(batch.texts), hyps)


def test_overfits_tiny_corpus(tiny_training, tiny_corpus):
    result, exp_dir = tiny_training
    assert _greedy_wer(result.final_dir, tiny_corpus) <= 0.1
    assert result.steps > 0 and math.isfinite(result.train_loss)
    for name in ("config.yaml", "tokenizer.model", "cmvn.json", "train.log", "metrics.csv", "best/best.json"):
        assert (exp_dir / name).is_file(), name
    assert ckpt.newest_intact_checkpoint(exp_dir / "checkpoints") is not None
    rows = (exp_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,split,loss") and any(",dev," in r for r in rows)
    # The first dev loss is far above the last: the run learned rather than memorised a constant.
    dev = [float(r.split(",")[3]) for r in rows[1:] if ",dev," in r]
    assert dev[-1] < 0.5 * dev[0]


def test_average_best_writes_loadable_model_dir(tiny_training, tmp_path):
    _, exp_dir = tiny_training
    out = average_model(exp_dir, 2, "best", tmp_path / "avg")
    model, tok, _ = ckpt.load_las(out)
    best = [ckpt.load_checkpoint(p)["model"] for p in sorted((exp_dir / "best").glob("model-*.pt"))]
    assert len(best) == 2
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (best[0][name] + best[1][name]) / 2, atol=1e-6), name


def test_average_cli_last_and_errors(tiny_training, tmp_path, capsys):
    from asr.cli import main

    _, exp_dir = tiny_training
    last = [ckpt.load_checkpoint(p)["model"] for p in ckpt.list_checkpoints(exp_dir / "checkpoints")[-2:]]
    assert len(last) == 2
    assert main(["average", "--exp-dir", str(exp_dir), "--n", "1", "--mode", "last", "--out", str(tmp_path / "a")]) == 0
    model, _, _ = ckpt.load_las(tmp_path / "a")
    for name, value in model.state_dict().items():
        assert torch.equal(value, last[-1][name]), name
    assert main(["average", "--exp-dir", str(exp_dir), "--n", "2", "--mode", "last", "--out", str(tmp_path / "b")]) == 0
    model, _, _ = ckpt.load_las(tmp_path / "b")
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (last[0][name] + last[1][name]) / 2, atol=1e-6), name
    assert not torch.equal(last[0]["ctc.weight"], last[1]["ctc.weight"])
    assert main(["average", "--exp-dir", str(tmp_path), "--n", "2", "--out", str(tmp_path / "c")]) == 2
    assert "best.json" in capsys.readouterr().err


# -- numerical guards ---------------------------------------------------------------------------------


def _trainer(tiny_config, vocab: int, tmp_path: Path, **train) -> Run:
    cfg = tiny_config(**train)
    cfg = type(cfg)(cfg.features, cfg.specaug, replace(cfg.model, vocab_size=vocab, n_mels=cfg.features.n_mels),
                    cfg.train)
    torch.manual_seed(0)
    model = ckpt.build_las(cfg)
    ctx = StepContext(model, build_optimizer(model, cfg.train), cfg.train, Dist())
    data = Data(None, None, None, None, None, [], batches_per_epoch=10)
    return Run(cfg, data, ctx, TrainState(), tmp_path, MetricsLog(tmp_path, False, False, None))


def _batch(n_mels: int, nan: bool = False):
    from asr.data.dataset import Batch

    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 60, n_mels, generator=g)
    if nan:
        feats[1, 10] = float("nan")
    targets = torch.tensor([[3, 4, 5], [6, 7, -1]])
    return Batch(feats, torch.tensor([60, 50]), targets, torch.tensor([3, 2]), ["a", "b"], ["", ""], ["", ""])


def test_nonfinite_loss_skips_step_and_counts(tiny_config, tmp_path):
    tr = _trainer(tiny_config, 12, tmp_path, max_nonfinite=3)
    n_mels = tr.exp_config.features.n_mels
    assert train_step(tr, _batch(n_mels), 1, True) is not None
    apply_update(tr, 0.0)
    assert tr.state.step == 1
    before = {k: v.clone() for k, v in tr.ctx.model.state_dict().items()}
    assert train_step(tr, _batch(n_mels, nan=True), 1, True) is None
    apply_update(tr, 0.0)
    assert (tr.state.step, tr.state.nonfinite_total, tr.state.nonfinite_in_row) == (1, 1, 1)
    for k, v in tr.ctx.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # A good step resets the run of failures; K in a row then stops training with a clear error.
    train_step(tr, _batch(n_mels), 1, True)
    apply_update(tr, 0.0)
    assert (tr.state.step, tr.state.nonfinite_in_row) == (2, 0)
    train_step(tr, _batch(n_mels, nan=True), 1, True)
    train_step(tr, _batch(n_mels, nan=True), 1, True)
    with pytest.raises(TrainingDivergedError, match="3 non-finite"):
        train_step(tr, _batch(n_mels, nan=True), 1, True)
    assert tr.state.nonfinite_total == 4


def test_nonfinite_gradient_skips_update(tiny_config, tmp_path):
    tr = _trainer(tiny_config, 12, tmp_path)
    train_step(tr, _batch(tr.exp_config.features.n_mels), 1, True)
    param = next(tr.ctx.model.parameters())
    param.grad[0] = float("inf")
    before = param.detach().clone()
    apply_update(tr, 0.0)
    assert tr.state.step == 0 and tr.state.nonfinite_total == 1
    assert torch.equal(param.detach(), before)
    assert all(p.grad is None for p in tr.ctx.model.parameters())


# -- schedules and config -------------------------------------------------------------------------------


def test_lr_schedules(tiny_config):
    base = tiny_config().train
    for schedule in ("noam", "cosine", "constant"):
        cfg = replace(base, lr_schedule=schedule, lr=1e-3, warmup_steps=10, min_lr=1e-5)
        lrs = [get_lr(cfg, s, 100) for s in range(100)]
        assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4)
        assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # linear warm-up
        assert min(lrs) >= 1e-5 - 1e-12
        if schedule == "constant":
            assert lrs[-1] == pytest.approx(1e-3)
        else:
            assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 5e-4
    assert get_lr(replace(base, lr_schedule="cosine", min_lr=1e-5, warmup_steps=0), 99, 100) == pytest.approx(1e-5)


def test_train_config_errors_name_the_key(tiny_config):
    with pytest.raises(ConfigError, match="lr_schedule"):
        replace(tiny_config().train, lr_schedule="linear")
    with pytest.raises(ConfigError, match="accum_grad"):
        replace(tiny_config().train, accum_grad=0)


def test_filters_too_long_utterances_and_accumulates(tiny_corpus, tiny_config, tmp_path):
    from dataclasses import replace as dc_replace

    from asr.data.manifest import write_manifest
    from asr.train import train

    longest = max(u.duration for u in tiny_corpus.utts)
    shortest = min(tiny_corpus.utts, key=lambda u: u.duration)
    # The shortest audio with every sentence of the corpus as its text: far more tokens than encoder frames.
    wordy = dc_replace(shortest, id="wordy", text=" ".join(tiny_corpus.texts))
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, [*tiny_corpus.utts, wordy])
    cfg = tiny_config(max_steps=2, max_utt_seconds=longest - 0.01, accum_grad=2, max_duration=3.0)
    result = train(cfg, manifest, tiny_corpus.manifest, tiny_corpus.tokenizer_path, tmp_path / "exp")
    assert result.steps == 2
    reasons = dict(line.split("\t") for line in (tmp_path / "exp" / "filtered.tsv").read_text().splitlines())
    assert len(reasons) == result.filtered_utts
    too_long = [u.id for u in tiny_corpus.utts if u.duration > longest - 0.01]
    assert too_long and all(reasons[uid].startswith("too long") for uid in too_long)
    assert reasons["wordy"].startswith("too few frames for CTC")
    assert set(reasons) == {*too_long, "wordy"}
    ckpt.load_las(result.final_dir)


def test_plots_are_written(tiny_training, tiny_corpus, tmp_path):
    import csv

    from asr.data.dataset import AsrDataset
    from asr.train.metrics import plot_attention, plot_curves

    result, exp_dir = tiny_training
    with open(exp_dir / "metrics.csv", newline="") as f:
        plot_curves(list(csv.DictReader(f)), tmp_path / "curves.png")
    model, tok, cfg = ckpt.load_las(result.final_dir)
    plot_attention(model, AsrDataset(tiny_corpus.utts[:1], tok, cfg.features), tmp_path / "att.png",
                   torch.device("cpu"))
    from PIL import Image

    # figsize x dpi 80: curves 10 x 4 in, attention 6 x 4 in.
    for name, size in (("curves.png", (800, 320)), ("att.png", (480, 320))):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = Image.open(tmp_path / name).convert("RGB")
        assert image.size == size, name
        pixels = torch.from_numpy(np.asarray(image).reshape(-1, 3).astype(np.float32))
        # Not blank: many colours, and a good share of the pixels differ from the background.
        assert len(torch.unique(pixels, dim=0)) > 20, name
        background = pixels.mode(dim=0).values
        assert (pixels - background).abs().sum(1).gt(30).float().mean() > 0.02, name


def test_tensorboard_events_and_resolved_config_in_checkpoint(tiny_corpus, tiny_config, tmp_path):
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from asr.config import load_experiment_config
    from asr.tokenizer import Tokenizer
    from asr.train import train

    cfg = tiny_config(max_steps=4, log_every=1, valid_every_steps=2, valid_every_epochs=0, tensorboard=True,
                      checkpoint_every_steps=2)
    train(cfg, tiny_corpus.manifest, tiny_corpus.manifest, tiny_corpus.tokenizer_path, tmp_path)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "train/lr", "dev/loss", "dev/wer"} <= set(acc.Tags()["scalars"])
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train_rows = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "train"]
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in logged] == [s for s, _ in train_rows] == [1, 2, 3, 4]
    assert [v for _, v in logged] == pytest.approx([v for _, v in train_rows], rel=1e-5)
    assert [e.step for e in acc.Scalars("dev/wer")] == [2, 4]
    # The checkpoint holds the resolved config: the tokenizer's vocabulary, the features' n_mels.
    stored = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "checkpoints")[-1])["config"]
    assert stored == load_experiment_config(tmp_path / "config.yaml").to_sections()
    assert stored["model"]["vocab_size"] == Tokenizer.load(tiny_corpus.tokenizer_path).vocab_size
    assert stored["model"]["n_mels"] == cfg.features.n_mels
    assert stored["train"] == cfg.to_sections()["train"]


# -- gradient accumulation --------------------------------------------------------------------------


class _ListSampler:
    """The sampler interface the loop uses, over a fixed list of batches."""

    def __init__(self, n: int):
        self.n = n

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.n

    def state_dict(self, consumed: int) -> dict:
        return {}


def _utterances(n_mels: int, n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    return [{"feats": torch.randn(40 + 7 * i, n_mels, generator=g), "tokens": [3 + i, 4 + i, 5],
             "id": f"u{i}", "text": "", "speaker": ""} for i in range(n)]


def _fit_on(tiny_config, tmp_path: Path, batches: list, accum_grad: int) -> dict[str, torch.Tensor]:
    from asr.train import fit

    run = _trainer(tiny_config, 12, tmp_path, accum_grad=accum_grad, max_steps=1, valid_every_epochs=0,
                   checkpoint_every_steps=0, warmup_steps=0, grad_clip=0.0)
    run.data = Data(None, None, _ListSampler(len(batches)), batches, None, [], batches_per_epoch=len(batches))
    # Plain SGD makes the update proportional to the gradient (Adam's first step is about lr * sign(g),
    # which would amplify rounding differences of near-zero gradients).
    run.ctx.optimizer = torch.optim.SGD(run.ctx.model.parameters(), lr=1.0)
    fit(run)
    assert run.state.step == 1
    return {k: v.clone() for k, v in run.ctx.model.state_dict().items()}


def test_accumulating_two_halves_equals_one_double_batch(tiny_config, tmp_path):
    from asr.data.dataset import collate

    items = _utterances(tiny_config().features.n_mels)
    whole = _fit_on(tiny_config, tmp_path / "a", [collate(items)], accum_grad=1)
    halves = _fit_on(tiny_config, tmp_path / "b", [collate(items[:2]), collate(items[2:])], accum_grad=2)
    # Without accumulation the second half would be a second update (or its gradient dropped).
    ignored = _fit_on(tiny_config, tmp_path / "c", [collate(items[:2])], accum_grad=1)
    moved = 0
    for name, w in whole.items():
        torch.testing.assert_close(halves[name], w, rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.allclose(ignored[name], w, rtol=1e-4, atol=1e-6)
    assert moved > 0
