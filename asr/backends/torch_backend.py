"""The torch backend: :class:`asr.model.LAS` and :class:`asr.lm.LSTMLM` behind the interface of :mod:`asr.backends`.

Encoder output and decoder state stay torch tensors on the model's device; what the search reads
(log-probs, attention) comes back as numpy arrays, and tokens and row indices go in as numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

# State fields that depend on the utterance only (the speller's encoder key projection): within a step
# rows are refilled from rows of their own utterance, so reordering them would copy identical data.
_UTTERANCE_CONSTANT_FIELDS = frozenset({"keys"})


def _index(idx: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(device)


def take_rows(x: Any, idx: np.ndarray, within_utterance: bool = False) -> Any:
    """Rows ``idx`` of a tensor or of a NamedTuple of batch-first tensors (None stays None)."""
    if x is None:
        return None
    if isinstance(x, Tensor):
        return x.index_select(0, _index(idx, x.device))
    return type(x)(*(
        t if within_utterance and name in _UTTERANCE_CONSTANT_FIELDS else t.index_select(0, _index(idx, t.device))
        for name, t in zip(x._fields, x)
    ))


class TorchModel:
    """An ``asr.model.LAS`` (eval mode) as a search backend."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device

    @property
    def has_ctc(self) -> bool:
        return self.model.ctc is not None

    @property
    def has_speller(self) -> bool:
        return self.model.decoder is not None

    @torch.inference_mode()
    def ctc_log_probs(self, enc: Tensor) -> np.ndarray:
        return self.model.ctc_log_probs(enc).float().cpu().numpy()

    def enc_mask(self, enc: Tensor, enc_lengths: np.ndarray) -> Tensor:
        lengths = torch.from_numpy(np.asarray(enc_lengths, dtype=np.int64)).to(enc.device)
        return torch.arange(enc.size(1), device=enc.device)[None, :] < lengths[:, None]

    @torch.inference_mode()
    def init_state(self, enc: Tensor, enc_lengths: np.ndarray):
        lengths = torch.from_numpy(np.asarray(enc_lengths, dtype=np.int64)).to(enc.device)
        return self.model.decoder.init_state(enc, lengths)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, state, enc: Tensor, mask: Tensor):
        logp, state, attention = self.model.decoder.step(_index(tokens, enc.device), state, enc, mask)
        return logp.float().cpu().numpy(), state, attention.float().cpu().numpy()

    def take(self, x: Any, idx: np.ndarray, within_utterance: bool = False) -> Any:
        return take_rows(x, idx, within_utterance)


class TorchLM:
    """An ``asr.lm.LSTMLM`` as a fusion LM of the search."""

    def __init__(self, lm):
        self.lm = lm

    def init_state(self, n: int):
        return self.lm.init_state(n)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, state) -> tuple[np.ndarray, Any]:
        logp, state = self.lm.step(torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)), state)
        return logp.float().cpu().numpy(), state

    def take(self, state: Any, idx: np.ndarray) -> Any:
        return take_rows(state, idx)
