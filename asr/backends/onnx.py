"""Run an exported folder (:mod:`asr.export`) on onnxruntime: numpy in, numpy out, no torch.

:func:`load_export` checks the folder (metadata, graphs, frontend constants, tokenizer, and that they
agree) and raises :class:`asr.errors.CheckpointError` with one line naming the file and the reason.
:class:`OnnxModel` and :class:`OnnxLM` implement the backend interface of :mod:`asr.backends`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from asr.errors import CheckpointError

FORMAT_VERSION = 1  # asr.export.FORMAT_VERSION (not imported: that module needs torch)
EXPORT_META = "export.json"


def is_export_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder written by ``asr export``."""
    return (Path(path) / EXPORT_META).is_file()


def _session(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError(path, "onnxruntime is not installed (pip install 'asr[onnx]')") from None
    if not path.is_file():
        raise CheckpointError(path, "graph file not found")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(path, f"not a loadable ONNX graph ({first[:200]})") from None


def _input_dim(session, name: str, axis: int):
    for i in session.get_inputs():
        if i.name == name:
            return i.shape[axis]
    return None


def _output_dim(session, name: str, axis: int):
    for o in session.get_outputs():
        if o.name == name:
            return o.shape[axis]
    return None


class OnnxModel:
    """An exported LAS on onnxruntime: frontend, listener, CTC head and speller step (see :mod:`asr.backends`)."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        from asr.backends.frontend import NumpyFrontend

        folder = Path(folder)
        meta_path = folder / EXPORT_META
        if not folder.is_dir():
            raise CheckpointError(folder, "export folder not found")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            graphs, features, model = meta["graphs"], meta["features"], meta["model"]
            version = meta["format_version"]
        except FileNotFoundError:
            raise CheckpointError(meta_path, "not found (not an exported model folder)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(meta_path, f"malformed export metadata ({type(e).__name__}: {e})") from None
        if version != FORMAT_VERSION:
            raise CheckpointError(meta_path, f"export format {version}, this version reads {FORMAT_VERSION}")
        if "listener" not in graphs or not ({"ctc", "speller_step"} & set(graphs)):
            raise CheckpointError(meta_path, "lists no listener graph or no CTC/speller graph")
        self.folder, self.meta = folder, meta
        self.features, self.config = features, model
        self.sample_rate = int(features["sample_rate"])
        self.time_reduction = int(meta["time_reduction"])
        self.vocab_size = int(model["vocab_size"])
        self.quantized = meta.get("quantize", "none") != "none"
        try:
            with np.load(folder / "frontend.npz") as z:
                arrays = {k: z[k] for k in ("window", "mel", "cmvn_mean", "cmvn_istd")}
        except FileNotFoundError:
            raise CheckpointError(folder / "frontend.npz", "not found") from None
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise CheckpointError(folder / "frontend.npz", f"cannot read the frontend constants ({type(e).__name__})") from None
        n_mels = int(features["n_mels"])
        if arrays["mel"].ndim != 2 or arrays["mel"].shape[1] != n_mels or arrays["cmvn_mean"].shape != (n_mels,):
            raise CheckpointError(folder / "frontend.npz", f"does not fit the config's {n_mels} mel bands")
        # An exported model knows no speakers: a speaker_cmn model falls back to each utterance's own mean,
        # as the torch backend does when no speaker mean is set.
        self.frontend = NumpyFrontend(**arrays, features=features,
                                      utterance_cmn=bool(model.get("utterance_cmn") or model.get("speaker_cmn")))
        self.listener = _session(folder / graphs["listener"], threads)
        if _input_dim(self.listener, "feats", 2) != n_mels:
            raise CheckpointError(folder / graphs["listener"], f"takes {_input_dim(self.listener, 'feats', 2)} "
                                  f"mel bands, export.json says {n_mels}")
        self.ctc = _session(folder / graphs["ctc"], threads) if "ctc" in graphs else None
        if self.ctc is not None and _output_dim(self.ctc, "log_probs", 2) != self.vocab_size:
            raise CheckpointError(folder / graphs["ctc"], f"outputs {_output_dim(self.ctc, 'log_probs', 2)} "
                                  f"tokens, export.json says {self.vocab_size}")
        self.speller_init = self.speller_step = None
        if "speller_step" in graphs:
            self.speller_init = _session(folder / graphs["speller_init"], threads)
            self.speller_step = _session(folder / graphs["speller_step"], threads)
            if _output_dim(self.speller_step, "log_probs", 1) != self.vocab_size:
                raise CheckpointError(folder / graphs["speller_step"], "does not fit the config's vocabulary")

    # -- the search's interface (asr.backends) --

    @property
    def has_ctc(self) -> bool:
        return self.ctc is not None

    @property
    def has_speller(self) -> bool:
        return self.speller_step is not None

    @property
    def frame_seconds(self) -> float:
        """Seconds per encoder frame: the feature hop times the listener's time reduction."""
        return int(self.features["hop_length"]) * self.time_reduction / self.sample_rate

    def encode(self, inputs, lengths) -> tuple[np.ndarray, np.ndarray]:
        """Waveforms (B, samples) or log-mel features (B, T, n_mels), lengths (B,) (arrays, or tensors).

        Returns enc (B, T', D) float32 and enc_lengths (B,) int64.
        """
        from asr.backends import as_array

        inputs, lengths = as_array(inputs, np.float32), as_array(lengths, np.int64)
        if inputs.ndim == 2:
            feats, frames = self.frontend([row[: int(n)] for row, n in zip(inputs, lengths)])
        elif inputs.ndim == 3:
            feats, frames = self.frontend.normalize(inputs, lengths), lengths
        else:
            raise ValueError(f"expected (batch, samples) or (batch, frames, n_mels), got {inputs.shape}")
        return self._listen(feats, frames)

    def encode_waves(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Waveforms (each (samples,) float32 at ``sample_rate``) -> enc (B, T', D), enc_lengths (B,)."""
        return self._listen(*self.frontend(waves))

    def load_lm(self, lm_dir, tokenizer) -> OnnxLM:
        """The LM graph of an export folder (``asr export --lm``); ``tokenizer`` is the model's (shared)."""
        return OnnxLM(lm_dir)

    def _listen(self, feats: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised features (B, T, n_mels), lengths (B,) -> enc (B, T', D) float32, enc_lengths (B,) int64."""
        r = self.time_reduction
        if feats.shape[1] < r:  # as LAS.encode: every utterance keeps at least one encoder frame
            feats = np.pad(feats, ((0, 0), (0, r - feats.shape[1]), (0, 0)))
        lengths = np.maximum(np.asarray(lengths, dtype=np.int64), r)
        enc, enc_lengths = self.listener.run(None, {"feats": np.ascontiguousarray(feats, dtype=np.float32),
                                                    "lengths": lengths})
        return enc, enc_lengths.astype(np.int64)

    def ctc_log_probs(self, enc: np.ndarray) -> np.ndarray:
        if self.ctc is None:
            raise RuntimeError("this model has no CTC head (ctc_weight == 0)")
        return self.ctc.run(None, {"enc": enc})[0]

    def enc_mask(self, enc: np.ndarray, enc_lengths: np.ndarray) -> np.ndarray:
        return np.arange(enc.shape[1])[None, :] < np.asarray(enc_lengths)[:, None]

    def init_state(self, enc: np.ndarray, enc_lengths: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.speller_init.run(None, {"enc": enc, "enc_lengths": np.asarray(enc_lengths, np.int64)}))

    def step(self, tokens: np.ndarray, state: tuple, enc: np.ndarray, mask: np.ndarray):
        h, c, context, alignment, keys = state
        logp, h, c, context, alignment, attention = self.speller_step.run(None, {
            "tokens": np.asarray(tokens, dtype=np.int64), "h_in": h, "c_in": c, "context_in": context,
            "alignment_in": alignment, "keys_in": keys, "enc": enc, "enc_mask": mask})
        return logp, (h, c, context, alignment, keys), attention

    def take(self, x, idx: np.ndarray, within_utterance: bool = False):
        if x is None:
            return None
        if isinstance(x, tuple):
            # The key projection (last field) depends on the utterance only: see asr.backends.torch_backend.
            keys = x[-1] if within_utterance else x[-1][idx]
            return (*(a[idx] for a in x[:-1]), keys)
        return x[idx]


class OnnxLM:
    """The exported LM step (``lm_step.onnx``) for shallow fusion."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        folder = Path(folder)
        try:
            meta = json.loads((folder / EXPORT_META).read_text(encoding="utf-8"))
            graphs = meta["graphs"]
            if "lm_step" in graphs:
                self.layers, self.hidden = int(meta["lm"]["layers"]), int(meta["lm"]["hidden"])
        except FileNotFoundError:
            raise CheckpointError(folder, "not an exported folder: with --backend onnx, --lm names an export "
                                  "made with --lm (often the model's own export folder)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(folder / EXPORT_META, f"malformed export metadata ({type(e).__name__}: {e})") from None
        if "lm_step" not in graphs:
            raise CheckpointError(folder, "this export has no LM (export it with --lm)")
        self.session = _session(folder / graphs["lm_step"], threads)

    def init_state(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        zeros = np.zeros((n, self.layers, self.hidden), np.float32)
        return zeros, zeros.copy()

    def step(self, tokens: np.ndarray, state: tuple) -> tuple[np.ndarray, tuple]:
        logp, h, c = self.session.run(None, {"tokens": np.asarray(tokens, np.int64), "h_in": state[0],
                                             "c_in": state[1]})
        return logp, (h, c)

    def take(self, state: tuple, idx: np.ndarray) -> tuple:
        return tuple(a[idx] for a in state)


def default_threads() -> int:
    """onnxruntime intra-op threads: ASR_THREADS, else all cores (onnxruntime's own default)."""
    return int(os.environ.get("ASR_THREADS", "0")) or 0
