"""CUDA paths: AMP bf16/fp16 training steps and the out-of-memory split. Run by scripts/gpu_check.sh.

Marked ``cuda``; without a CUDA device every test here is skipped (this project's CI machines have none).
"""

from __future__ import annotations

import pytest
import torch

from asr import checkpoint as ckpt
from asr.data.manifest import write_manifest

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_on_cuda(amp, tiny_corpus, tiny_config, tmp_path, caplog):
    """``train.amp`` on CUDA: autocast (fp16 with a GradScaler) trains, master weights stay fp32."""
    from asr.train import train

    dev = tmp_path / "dev.jsonl"
    write_manifest(dev, tiny_corpus.utts[:3])
    cfg = tiny_config(max_steps=6, max_duration=3.0, dev_wer_utts=2, warmup_steps=2, amp=amp)
    with caplog.at_level("INFO", logger="asr"):
        result = train(cfg, tiny_corpus.manifest, dev, tiny_corpus.tokenizer_path, tmp_path / "exp")
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[amp]
    assert any(f"torch.{dtype} autocast on cuda" in r.getMessage() for r in caplog.records)
    assert result.steps == 6
    weights = ckpt.load_checkpoint(result.final_dir / "model.pt")["model"]
    floats = [w for w in weights.values() if w.is_floating_point()]
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in floats)


def test_out_of_memory_batch_is_retried_in_halves(tiny_config, monkeypatch):
    """A batch that raises CUDA OOM is retried in halves; the summed gradients equal the whole batch's."""
    from asr import train as train_mod
    from asr.data.dataset import Batch
    from asr.model import LAS, ModelConfig

    device = torch.device("cuda")
    cfg = ModelConfig(n_mels=8, vocab_size=12, listener_hidden=16, attention_dim=12, embed_dim=8,
                      decoder_hidden=16, dropout=0.0, decoder_dropout=0.0)
    torch.manual_seed(0)
    model = LAS(cfg).to(device).train()
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([60, 52, 44, 36])
    tlen = torch.tensor([4, 3, 3, 2])
    feats = torch.randn(4, 60, 8, generator=g)
    targets = torch.randint(3, 12, (4, 4), generator=g).masked_fill(torch.arange(4) >= tlen[:, None], -1)
    batch = Batch(feats, lengths, targets, tlen, [f"u{i}" for i in range(4)], [""] * 4, [""] * 4)
    train_cfg = tiny_config().train
    ctx = train_mod.StepContext(model, torch.optim.SGD(model.parameters(), lr=0.0), train_cfg,
                                train_mod.Dist(device=device), None, None)

    whole = train_mod.forward_backward(ctx, batch, 1.0)
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    real_forward = LAS.forward
    calls = []

    def forward_that_runs_out_of_memory(self, feats, *args):
        calls.append(feats.size(0))
        if feats.size(0) > 2:  # the device "runs out" above 2 utterances: a real torch OOM error type
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test: more than 2 utterances)")
        return real_forward(self, feats, *args)

    monkeypatch.setattr(LAS, "forward", forward_that_runs_out_of_memory)
    stats = train_mod.forward_backward_guarded(ctx, batch, 1.0, True)
    assert calls == [4, 2, 2]
    assert stats["utts"] == 4
    assert stats["loss"] == pytest.approx(whole["loss"], rel=1e-4)
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-5)
