"""bf16 mixed precision on CPU (torch.autocast("cpu", dtype=torch.bfloat16)) where the CPU has bf16 units.

The whole LAS step runs under autocast, its matrix products in bf16, its losses and recurrent state in
fp32, its gradients reach fp32 master weights; training with ``train.amp: bf16`` resumes exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from asr import checkpoint as ckpt
from asr import ops
from asr.config import replace
from asr.data.manifest import write_manifest
from asr.model import LAS, ModelConfig, lengths_to_mask
from asr.tokenizer import IGNORE_ID

pytestmark = pytest.mark.skipif(not ops.bf16_supported("cpu"), reason="this CPU has no avx512_bf16/amx_bf16")

VOCAB = 12
TINY = dict(n_mels=8, vocab_size=VOCAB, listener_hidden=16, attention_dim=12, attention_heads=2,
            location_channels=3, location_kernel=5, embed_dim=8, decoder_hidden=16,
            dropout=0.0, decoder_dropout=0.0)


def _batch(lengths=(40, 27, 16), target_lengths=(5, 3, 2)):
    gen = torch.Generator().manual_seed(0)
    lengths, target_lengths = torch.tensor(lengths), torch.tensor(target_lengths)
    feats = torch.randn(len(lengths), int(lengths.max()), 8, generator=gen)
    targets = torch.randint(3, VOCAB, (len(lengths), int(target_lengths.max())), generator=gen)
    return feats, lengths, targets.masked_fill(~lengths_to_mask(target_lengths), IGNORE_ID), target_lengths


class _MatmulDtypes(TorchDispatchMode):
    """Records the dtype of every matrix product (and fused LSTM layer) that runs.

    Products into a given ``out=`` tensor are left out: autocast does not apply to them, and the one
    such product, the log-mel frontend's filterbank, stays fp32 on purpose (a log follows it).
    """

    PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "linear", "matmul", "mkldnn_rnn_layer",
                "mkldnn_rnn_layer_backward", "_convolution", "convolution"}

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.PRODUCTS and "out" not in (kwargs or {}):
            first = next(a for a in args if isinstance(a, torch.Tensor))
            self.seen.append((name, first.dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("attention", ["location", "content", "multihead"])
def test_whole_step_under_autocast_runs_products_in_bf16(attention):
    torch.manual_seed(0)
    model = LAS(ModelConfig(**{**TINY, "attention": attention})).train()
    batch = _batch()
    recorder = _MatmulDtypes()
    with recorder:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(*batch)
        out.loss.backward()
    assert out.loss.dtype == out.ctc_loss.dtype == out.att_loss.dtype == torch.float32
    products = [name for name, _ in recorder.seen]
    assert "mm" in products and "bmm" in products, products
    fp32 = [(name, dt) for name, dt in recorder.seen if dt != torch.bfloat16]
    assert not fp32, f"products outside bf16: {fp32}"
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name


def test_bf16_loss_and_gradients_are_close_to_fp32():
    torch.manual_seed(0)
    model = LAS(ModelConfig(**TINY)).train()
    batch = _batch()
    out32 = model(*batch)
    g32 = torch.autograd.grad(out32.loss, list(model.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model(*batch)
    g16 = torch.autograd.grad(out16.loss, list(model.parameters()))
    assert abs(out16.loss.item() - out32.loss.item()) < 0.02 * out32.loss.item()
    flat32, flat16 = torch.cat([g.flatten() for g in g32]), torch.cat([g.flatten() for g in g16])
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.99


def test_bf16_decoding_step_matches_fp32():
    torch.manual_seed(0)
    model = LAS(ModelConfig(**TINY)).eval()
    feats, lengths, _, _ = _batch()
    tokens = torch.tensor([4, 5, 6])

    def first_step():
        enc, enc_lengths = model.encode(feats, lengths)
        state = model.decoder.init_state(enc, enc_lengths)
        mask = lengths_to_mask(enc_lengths, enc.size(1))
        log_probs, state, _ = model.decoder.step(tokens, state, enc, mask)
        log_probs2, _, _ = model.decoder.step(tokens, state, enc, mask)
        return log_probs2

    with torch.no_grad():
        ref = first_step()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = first_step()
    assert low.dtype == torch.float32, "beam scores stay fp32"
    torch.testing.assert_close(low.exp(), ref.exp(), atol=0.02, rtol=0)


def test_bf16_training_resumes_exactly(tiny_corpus, tiny_config, tmp_path, caplog):
    """``train.amp: bf16`` on CPU: N steps, stop, resume for N equals 2N uninterrupted, bit for bit."""
    from asr.train import train

    dev = tmp_path / "dev.jsonl"
    write_manifest(dev, tiny_corpus.utts[:3])
    common = dict(max_duration=3.0, checkpoint_every_steps=0, dev_wer_utts=2, warmup_steps=2, amp="bf16")
    n = 3
    args = (tiny_corpus.manifest, dev, tiny_corpus.tokenizer_path)

    def cfg(steps, **extra):
        c = tiny_config(max_steps=steps, **{**common, **extra})
        model = replace(c.model, dropout=0.3, decoder_dropout=0.3)
        return type(c)(c.features, c.specaug, model, c.train)

    with caplog.at_level("INFO", logger="asr"):
        full = train(cfg(2 * n), *args, tmp_path / "full")
    assert any("bfloat16 autocast on cpu" in r.getMessage() for r in caplog.records)
    fp32 = train(cfg(2 * n, amp="none"), *args, tmp_path / "fp32")
    train(cfg(n), *args, tmp_path / "split")
    resumed = train(cfg(2 * n), *args, tmp_path / "split", resume=True)
    a = ckpt.load_checkpoint(full.final_dir / "model.pt")["model"]
    b = ckpt.load_checkpoint(resumed.final_dir / "model.pt")["model"]
    c = ckpt.load_checkpoint(fp32.final_dir / "model.pt")["model"]
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert torch.equal(a[name], b[name]), name
    floats = [k for k in a if a[k].is_floating_point()]
    assert all(a[k].dtype == torch.float32 for k in floats), "master weights stay fp32"
    # bf16 really ran: the weights differ from the fp32 run's (slightly: same data, same seed).
    assert any(not torch.equal(a[k], c[k]) for k in floats)


def test_bf16_inference_option_decodes_like_fp32(tiny_model_dir, tiny_corpus):
    """``DecodeOptions(dtype="bf16")``: encoder and search products in bf16, the same text as fp32."""
    from asr.audio import load_audio
    from asr.data.manifest import read_manifest
    from asr.decoding import DecodeOptions
    from asr.inference import Recognizer

    rec = Recognizer.from_dir(tiny_model_dir)
    utts = read_manifest(tiny_corpus.manifest)[:6]
    waves = [torch.from_numpy(load_audio(u.audio)) for u in utts]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    options = DecodeOptions(beam_size=3, ctc_weight=0.3)
    fp32 = [nbest[0] for nbest in rec.decode_batch(batch, lengths, options)]
    recorder = _MatmulDtypes()
    with recorder:
        bf16 = [nbest[0] for nbest in rec.decode_batch(batch, lengths, replace(options, "options", dtype="bf16"))]
    assert recorder.seen and all(dt == torch.bfloat16 for _, dt in recorder.seen), set(recorder.seen)
    same = sum(a.tokens == b.tokens for a, b in zip(fp32, bf16, strict=True))
    assert same >= len(utts) - 1, [(a.tokens, b.tokens) for a, b in zip(fp32, bf16, strict=True)]
