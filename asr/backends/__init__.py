"""Model backends: the calls a search makes, over numpy arrays, for torch or onnxruntime.

:mod:`asr.decoding` drives one search over any object with this interface (``enc``, ``mask`` and
``state`` are whatever the backend keeps: torch tensors, numpy arrays):

- ``has_ctc``, ``has_speller``: which parts the model has;
- ``ctc_log_probs(enc) -> (B, T', V) float32 ndarray``;
- ``init_state(enc, enc_lengths (B,) int64) -> state``;
- ``enc_mask(enc, enc_lengths) -> mask`` (True on valid frames);
- ``step(tokens (N,) int64, state, enc, mask) -> (log_probs (N, V) float32, state, attention (N, T') float32)``;
- ``take(x, idx (N',) int64) -> x``: rows ``idx`` of enc, mask or a state.

A language model for fusion has ``init_state(n)``, ``step(tokens (N,) int64, state) -> (log_probs (N, V)
float32, state)`` and ``take(state, idx)``.

:mod:`asr.backends.torch_backend` adapts :class:`asr.model.LAS` and :class:`asr.lm.LSTMLM`;
:mod:`asr.backends.onnx` runs an exported folder (:mod:`asr.export`) on onnxruntime and imports no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_array(x: Any, dtype: Any = None) -> np.ndarray:
    """A numpy array from an array, a list or a (CPU or GPU) torch tensor, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)
