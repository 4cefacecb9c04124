"""ONNX export and int8 quantization of a model folder (``asr export``).

An exported folder holds everything :class:`asr.backends.onnx.OnnxBackend` needs, with no torch:

=====================  ==========================================================================
``listener.onnx``      normalised log-mel (B, T, n_mels), lengths (B,) -> enc (B, T', D), enc_lengths
``ctc.onnx``           enc (B, T', D) -> CTC log-probs (B, T', V)            (models with a CTC head)
``speller_init.onnx``  enc, enc_lengths -> the speller state before the first step    (with a speller)
``speller_step.onnx``  token (N,), state (h, c, context, alignment, keys), enc, enc_mask
                       -> log-probs (N, V), new state, attention (N, T')              (with a speller)
``lm_step.onnx``       token (N,), h, c -> log-probs (N, V), h, c                      (with ``--lm``)
``frontend.npz``       the log-mel constants (Hann window, mel matrix) and the CMVN mean and 1/std
``tokenizer.model``    the sentencepiece model (``lm_tokenizer.model`` is not needed: the LM must share it)
``export.json``        format version, feature and model config, graph names, quantization, source
``README.md``          a model card
=====================  ==========================================================================

Batch and time axes are dynamic in every graph. The frontend runs in numpy
(:mod:`asr.backends.frontend`) with the saved matrices: it is the same arithmetic as
:class:`asr.features.LogMel` and costs far less than the listener. The graphs are traced from the
plain forms of :mod:`asr.model` in eval mode (dropout off), so their outputs match
:meth:`asr.model.LAS.encode` and :meth:`asr.model.Speller.step` to float32 rounding.

``quantize="int8"`` runs onnxruntime's dynamic quantization (int8 weights, activations quantized per
call) on the listener, CTC, speller step and LM graphs: the MatMul and LSTM weights are the bulk of
the work.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from asr.errors import AsrError, ConfigError
from asr.io_utils import atomic_write_text

FORMAT_VERSION = 1
OPSET = 17
QUANTIZE_CHOICES = ("none", "int8")
STATE_NAMES = ("h", "c", "context", "alignment", "keys")


class ExportError(AsrError):
    """An export that cannot be written (missing exporter, a graph the exporter rejects, a bad target)."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What ``asr export`` writes. ``lm_dir``: an LM folder to export beside the model (empty: none)."""

    quantize: str = "none"  # "none" | "int8"
    lm_dir: str = ""
    opset: int = OPSET
    overwrite: bool = False

    def __post_init__(self):
        if self.quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {self.quantize!r}")


# ------------------------------------------------------------------------------------------------
# Graph wrappers: flat tensor inputs and outputs, as ONNX wants them
# ------------------------------------------------------------------------------------------------


class _Listener(nn.Module):
    """Normalised features -> encoder output (the part of LAS.encode after CMVN)."""

    def __init__(self, model):
        super().__init__()
        self.listener = model.listener

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        from asr.model import lengths_to_mask

        feats = feats.masked_fill(~lengths_to_mask(lengths, feats.size(1))[..., None], 0.0)
        return self.listener(feats, lengths)


class _CTC(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.ctc = model.ctc

    def forward(self, enc: Tensor) -> Tensor:
        return torch.log_softmax(self.ctc(enc), dim=-1)


class _SpellerInit(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.speller = model.decoder

    def forward(self, enc: Tensor, enc_lengths: Tensor):
        return tuple(self.speller.init_state(enc, enc_lengths))


class _SpellerStep(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.speller = model.decoder

    def forward(self, tokens, h, c, context, alignment, keys, enc, enc_mask):
        from asr.model import DecoderState

        logp, state, attention = self.speller.step(tokens, DecoderState(h, c, context, alignment, keys), enc, enc_mask)
        return logp, state.h, state.c, state.context, state.alignment, attention


class _LMStep(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, tokens, h, c):
        from asr.lm import LMState

        logp, state = self.lm.step(tokens, LMState(h, c))
        return logp, state.h, state.c


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def _onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                 dynamic: dict[str, dict[int, str]], opset: int) -> None:
    """Trace ``module`` on ``args`` into ``path`` with the named dynamic axes."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("asr export", "the onnx package is not installed (pip install 'asr[export]')") from None
    try:
        with warnings.catch_warnings():
            # The tracer warns about Python branches on sizes; those are fixed for a given model.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    except Exception as e:  # the exporter raises many types; the user needs the graph and the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(path.name, f"ONNX export failed ({first})") from None


def _example(model, batch: int = 2, frames: int = 40):
    """Example inputs for tracing: two utterances of unequal length (so masking is traced, not folded)."""
    cfg = model.cfg
    frames = max(frames, 2 * cfg.time_reduction)
    feats = torch.randn(batch, frames, cfg.n_mels)
    lengths = torch.tensor([frames] + [frames - cfg.time_reduction] * (batch - 1), dtype=torch.long)
    with torch.no_grad():
        enc, enc_lengths = model.listener(feats, lengths)
    return feats, lengths, enc, enc_lengths


def export_graphs(model, out: Path, opset: int = OPSET, lm=None) -> dict[str, str]:
    """Write the ONNX graphs of ``model`` (an eval-mode :class:`asr.model.LAS`) into ``out``.

    Returns {role: file name} for export.json.
    """
    model = model.eval()
    feats, lengths, enc, enc_lengths = _example(model)
    graphs = {}
    with torch.no_grad():
        _onnx_export(_Listener(model), (feats, lengths), out / "listener.onnx", ["feats", "lengths"],
                     ["enc", "enc_lengths"],
                     {"feats": {0: "batch", 1: "frames"}, "lengths": {0: "batch"},
                      "enc": {0: "batch", 1: "enc_frames"}, "enc_lengths": {0: "batch"}}, opset)
        graphs["listener"] = "listener.onnx"
        enc_axes = {0: "batch", 1: "enc_frames"}
        if model.ctc is not None:
            _onnx_export(_CTC(model), (enc,), out / "ctc.onnx", ["enc"], ["log_probs"],
                         {"enc": enc_axes, "log_probs": enc_axes}, opset)
            graphs["ctc"] = "ctc.onnx"
        if model.decoder is not None:
            _onnx_export(_SpellerInit(model), (enc, enc_lengths), out / "speller_init.onnx", ["enc", "enc_lengths"],
                         list(STATE_NAMES),
                         {"enc": enc_axes, "enc_lengths": {0: "batch"}, "h": {0: "batch"}, "c": {0: "batch"},
                          "context": {0: "batch"}, "alignment": {0: "batch", 2: "enc_frames"}, "keys": enc_axes},
                         opset)
            graphs["speller_init"] = "speller_init.onnx"
            state = model.decoder.init_state(enc, enc_lengths)
            attention = model.decoder.attention
            if attention.location is not None:  # the sliding-window form does not export: trace the conv form
                attention.location_energy = attention.location_energy_conv
            mask = torch.arange(enc.size(1))[None, :] < enc_lengths[:, None]
            tokens = torch.tensor([5, 3][: enc.size(0)] + [4] * max(0, enc.size(0) - 2), dtype=torch.long)
            rows = {0: "rows"}
            rows_t = {0: "rows", 1: "enc_frames"}
            _onnx_export(_SpellerStep(model), (tokens, *state, enc, mask), out / "speller_step.onnx",
                         ["tokens", *(f"{n}_in" for n in STATE_NAMES), "enc", "enc_mask"],
                         ["log_probs", "h_out", "c_out", "context_out", "alignment_out", "attention"],
                         {"tokens": rows, "h_in": rows, "c_in": rows, "context_in": rows,
                          "alignment_in": {0: "rows", 2: "enc_frames"}, "keys_in": rows_t, "enc": rows_t,
                          "enc_mask": rows_t, "log_probs": rows, "h_out": rows, "c_out": rows,
                          "context_out": rows, "alignment_out": {0: "rows", 2: "enc_frames"},
                          "attention": rows_t}, opset)
            graphs["speller_step"] = "speller_step.onnx"
            attention.__dict__.pop("location_energy", None)
        if lm is not None:
            lm = lm.eval()
            tokens = torch.tensor([3, 4], dtype=torch.long)
            st = lm.init_state(2)
            rows = {0: "rows"}
            _onnx_export(_LMStep(lm), (tokens, st.h, st.c), out / "lm_step.onnx", ["tokens", "h_in", "c_in"],
                         ["log_probs", "h_out", "c_out"],
                         {"tokens": rows, "h_in": rows, "c_in": rows, "log_probs": rows, "h_out": rows,
                          "c_out": rows}, opset)
            graphs["lm_step"] = "lm_step.onnx"
    return graphs


def quantize_graphs(out: Path, graphs: dict[str, str]) -> None:
    """Dynamic int8 quantization (onnxruntime.quantization.quantize_dynamic) of the weight-heavy graphs, in place."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ExportError("--quantize int8", "onnxruntime is not installed (pip install 'asr[export]')") from None
    for role in ("listener", "ctc", "speller_step", "lm_step"):
        if role not in graphs:
            continue
        src = out / graphs[role]
        tmp = src.with_suffix(".fp32.onnx")
        src.rename(tmp)
        try:
            logging.disable(logging.WARNING)  # its advice to pre-process applies to convolution models
            try:
                quantize_dynamic(str(tmp), str(src), weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(src.name, f"int8 quantization failed ({first})") from None
        finally:
            tmp.unlink(missing_ok=True)


def _frontend_arrays(exp_config, model) -> dict[str, np.ndarray]:
    from asr.features import LogMel

    logmel = LogMel(exp_config.features)
    return {
        "window": logmel.window.numpy(),
        "mel": logmel.mel.numpy(),  # (n_bins, n_mels): cut to the bins the filters touch
        "cmvn_mean": model.cmvn_mean.detach().cpu().numpy(),
        "cmvn_istd": model.cmvn_istd.detach().cpu().numpy(),
    }


def _model_card(meta: dict, source: Path) -> str:
    m, f = meta["model"], meta["features"]
    graphs = ", ".join(f"`{g}`" for g in meta["graphs"].values())
    quant = "int8 weights (onnxruntime dynamic quantization)" if meta["quantize"] == "int8" else "float32"
    return f"""# Exported LAS model

Exported by `asr export` from `{source}` (format version {meta['format_version']}, opset {meta['opset']}).

- **Model**: Listen-Attend-Spell with joint CTC; {meta['parameters']:,} parameters; listener
  {m['listener_layers']} BLSTM + {m['pyramid_layers']} pyramidal BLSTM layers of {m['listener_hidden']} units per
  direction (time reduction {meta['time_reduction']}), {m['attention']} attention, {m['decoder_layers']}-layer
  {m['decoder_hidden']}-unit speller, {m['vocab_size']} sentencepiece pieces, CTC weight {m['ctc_weight']} in training.
- **Input**: {f['sample_rate']} Hz mono audio; {f['n_mels']} log-mel bands, {f['win_length']}-sample windows
  every {f['hop_length']} samples (computed in numpy from `frontend.npz`).
- **Weights**: {quant}.
- **Graphs**: {graphs}; batch and time axes are dynamic.
- **Language model**: {"exported (`lm_step.onnx`)" if "lm_step" in meta["graphs"] else "none"}.

## Run it without torch

```bash
pip install onnxruntime numpy soundfile sentencepiece   # plus this package without its dependencies:
pip install --no-deps asr                              # (or put the source tree on PYTHONPATH)
asr transcribe --model THIS_FOLDER speech.wav
```

```python
import asr
rec = asr.load_model("THIS_FOLDER")   # recognises an exported folder; runs on onnxruntime
print(rec.transcribe("speech.wav"))
```
"""


def export_model(model_dir: str | Path, out_dir: str | Path, cfg: ExportConfig = ExportConfig()) -> Path:
    """Export a model folder (and optionally an LM folder) to ``out_dir``; returns ``out_dir``.

    The folder is written to a temporary sibling and renamed into place, so a failed export leaves
    no half-written folder. Raises CheckpointError for a bad model or LM folder, ConfigError for an
    existing target without ``overwrite``, ExportError when the exporter or quantizer fails.
    """
    from asr.checkpoint import load_las

    out = Path(out_dir)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(out, "already exists (pass --overwrite to replace it)")
    model, tokenizer, exp_config = load_las(model_dir)
    lm = None
    if cfg.lm_dir:
        from asr.lm import load_lm, same_vocabulary

        lm, lm_tok = load_lm(cfg.lm_dir)
        if not same_vocabulary(lm_tok, tokenizer):
            raise ConfigError(cfg.lm_dir, "the LM's tokenizer differs from the ASR model's tokenizer")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        graphs = export_graphs(model, tmp, cfg.opset, lm)
        if cfg.quantize == "int8":
            quantize_graphs(tmp, graphs)
        np.savez(tmp / "frontend.npz", **_frontend_arrays(exp_config, model))
        tokenizer.copy_to(tmp)
        meta = {
            "format_version": FORMAT_VERSION,
            "opset": cfg.opset,
            "quantize": cfg.quantize,
            "source": str(model_dir),
            "lm_source": cfg.lm_dir,
            "graphs": graphs,
            "parameters": sum(p.numel() for p in model.parameters()),
            "time_reduction": exp_config.model.time_reduction,
            "encoder_dim": model.listener.output_dim,
            "attention_heads": model.decoder.attention.heads if model.decoder is not None else 0,
            "features": dataclasses.asdict(exp_config.features),
            "model": dataclasses.asdict(exp_config.model),
            "lm": {"layers": lm.cfg.layers, "hidden": lm.cfg.hidden} if lm is not None else None,
        }
        atomic_write_text(tmp / "export.json", json.dumps(meta, indent=2) + "\n")
        atomic_write_text(tmp / "README.md", _model_card(meta, Path(model_dir)))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["ExportConfig", "ExportError", "export_model", "export_graphs", "quantize_graphs"]
