"""Listen-Attend-Spell with a joint CTC head (Chan et al. 2016; Kim, Hori & Watanabe 2017).

The network has three parts:

* :class:`Listener` - optional frame stacking, plain BLSTM layers, then pyramidal BLSTM layers that each
  halve the frame rate by concatenating adjacent frame pairs. Padding never reaches a real utterance's
  output (see :class:`BLSTM`).
* :class:`Speller` - an LSTM decoder with input feeding (the previous attention context enters the
  first layer) and additive attention: location-aware (Chorowski et al. 2015), content-only, or several
  location-aware heads.
* a CTC head on the listener output; the training loss is
  ``ctc_weight * ctc_loss + (1 - ctc_weight) * attention_loss``. ``ctc_weight == 1`` builds no speller,
  ``ctc_weight == 0`` builds no CTC head.

Both losses are sums over tokens divided by the batch size. Token ids come from :mod:`asr.tokenizer`:
the decoder input starts with ``SOS_ID`` and the target sequence is ``tokens + [EOS_ID]``.

Beam search reorders a :class:`DecoderState` with ``DecoderState(*(t.index_select(0, idx) for t in
state))``; the encoder key projection travels inside the state (``keys``), so it is computed once per
utterance by :meth:`Speller.init_state` and reordered with the rest.

Speed (training on CPU is what limits the recipes): the BLSTMs run on the plain padded layout, where
PyTorch's fused oneDNN kernels apply (:class:`BLSTM`); the decoder loop computes the embedding side of
the first cell for all steps in one product and applies the output projection and the losses once after
the loop. The rewritten operations that make a step cheap (sigmoid attention scores, the folded location
matrix, once-per-sequence gradients of shared operands, the decoding weight cache) live in
:mod:`asr.ops`, each beside its plain reference form.

Under ``torch.autocast`` (CPU bf16 on AVX-512-bf16/AMX machines, CUDA bf16/fp16) the products run in the
low-precision dtype; the LSTM cell state, the attention softmax and both losses stay in fp32.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr import ops
from asr.tokenizer import BLANK_ID, EOS_ID, IGNORE_ID, SOS_ID

ATTENTION_TYPES = ("location", "content", "multihead")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes and loss settings of the LAS model. Defaults train in reasonable time on 2 CPU cores."""

    n_mels: int = 80
    vocab_size: int = 0  # 0 = not set yet; the trainer sets it from the tokenizer
    frame_stack: int = 1  # stack (and subsample) this many input frames before the listener
    listener_hidden: int = 256  # per direction
    listener_layers: int = 1  # plain BLSTM layers before the pyramid
    pyramid_layers: int = 2  # each halves the frame rate: reduction frame_stack * 2**N
    dropout: float = 0.1  # between listener layers
    attention: str = "location"  # "location" | "content" | "multihead"
    attention_dim: int = 128
    attention_heads: int = 4  # multihead only
    location_channels: int = 10
    location_kernel: int = 31  # odd, in encoder frames
    embed_dim: int = 128
    decoder_hidden: int = 256
    decoder_layers: int = 1
    decoder_dropout: float = 0.1
    ctc_weight: float = 0.3  # 0 = pure attention, 1 = pure CTC (no speller)
    label_smoothing: float = 0.1
    sampling_prob: float = 0.0  # scheduled sampling: feed back the argmax with this probability
    # Subtract each utterance's own mean (cepstral mean normalisation) instead of the corpus mean: it
    # removes a speaker's or microphone's fixed spectral tilt, which helps on speakers unseen in training.
    utterance_cmn: bool = False
    # Subtract the speaker's mean instead (Kaldi's per-speaker CMN, apply-cmvn --utt2spk). The caller does
    # it: the training dataset and the decoder hold every speaker's mean log-mel, and :meth:`LAS.encode`
    # only scales. A short utterance's own mean is mostly its own sounds (a 0.4 s digit is one vowel), so
    # utterance CMN removes content as well as the voice; a speaker's mean over many utterances does not.
    # Where no speaker is known (one file, a live stream), the backends fall back to the utterance's mean.
    speaker_cmn: bool = False

    def __post_init__(self):
        checks = [
            (self.n_mels >= 1, "n_mels must be >= 1"),
            (
                self.vocab_size == 0 or self.vocab_size > 3,
                "vocab_size must be > 3 (blank, unk, sos/eos + tokens)",
            ),
            (self.frame_stack >= 1, "frame_stack must be >= 1"),
            (self.listener_hidden >= 1, "listener_hidden must be >= 1"),
            (self.listener_layers >= 0, "listener_layers must be >= 0"),
            (self.pyramid_layers >= 0, "pyramid_layers must be >= 0"),
            (
                self.listener_layers + self.pyramid_layers >= 1,
                "the listener needs at least one layer",
            ),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (
                self.attention in ATTENTION_TYPES,
                f"attention must be one of {', '.join(ATTENTION_TYPES)}",
            ),
            (self.attention_dim >= 1, "attention_dim must be >= 1"),
            (self.attention_heads >= 1, "attention_heads must be >= 1"),
            (self.location_channels >= 1, "location_channels must be >= 1"),
            (
                self.location_kernel >= 1 and self.location_kernel % 2 == 1,
                "location_kernel must be odd and >= 1",
            ),
            (self.embed_dim >= 1, "embed_dim must be >= 1"),
            (self.decoder_hidden >= 1, "decoder_hidden must be >= 1"),
            (self.decoder_layers >= 1, "decoder_layers must be >= 1"),
            (0.0 <= self.decoder_dropout < 1.0, "decoder_dropout must be in [0, 1)"),
            (0.0 <= self.ctc_weight <= 1.0, "ctc_weight must be in [0, 1]"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (0.0 <= self.sampling_prob <= 1.0, "sampling_prob must be in [0, 1]"),
            (not (self.utterance_cmn and self.speaker_cmn), "utterance_cmn and speaker_cmn exclude each other"),
        ]
        if self.attention == "multihead":
            heads = self.attention_heads
            checks += [
                (
                    self.attention_dim % heads == 0,
                    "attention_dim must be divisible by attention_heads",
                ),
                (
                    (2 * self.listener_hidden) % heads == 0,
                    "2 * listener_hidden must be divisible by attention_heads",
                ),
            ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def time_reduction(self) -> int:
        """Input frames per encoder frame."""
        return self.frame_stack * 2**self.pyramid_layers

    @property
    def encoder_dim(self) -> int:
        return 2 * self.listener_hidden


def output_lengths(lengths: Tensor | int, cfg: ModelConfig) -> Tensor | int:
    """Encoder frames for ``lengths`` input frames: ``max(lengths, R) // R`` with R = cfg.time_reduction.

    Stacking drops the frames left over after the last full stack and each pyramid layer drops an odd
    last frame, so the reductions compose to one floor division. Utterances shorter than R frames are
    zero-padded to R so that every utterance keeps at least one encoder frame.
    lengths: (batch,) long, or an int.
    """
    r = cfg.time_reduction
    if isinstance(lengths, int):
        return max(lengths, r) // r
    return torch.div(lengths.clamp(min=r), r, rounding_mode="floor")


def utterance_mean(feats: Tensor, lengths: Tensor) -> Tensor:
    """Mean over each utterance's valid frames: (B, 1, n_mels). feats: (B, T, n_mels); lengths: (B,)."""
    mask = lengths_to_mask(lengths, feats.size(1))[..., None]
    total = feats.masked_fill(~mask, 0.0).sum(dim=1, keepdim=True)
    return total / lengths.clamp(min=1)[:, None, None].to(feats.dtype)


def lengths_to_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Boolean mask (batch, max_len), True on valid positions. lengths: (batch,)."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device) < lengths[:, None]


# ------------------------------------------------------------------------------------------------
# Listener
# ------------------------------------------------------------------------------------------------


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence within its length, leaving the padding in place.

    x: (B, T, F); lengths: (B,). Applying it twice gives x back.
    """
    steps = torch.arange(x.size(1), device=x.device)
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # (B, T)
    return x.gather(1, index[..., None].expand_as(x))


class BLSTM(nn.Module):
    """A bidirectional LSTM layer that ignores padding, run as two unidirectional passes.

    Padding sits at the end of each sequence, so a forward pass over the padded tensor never lets it
    reach a valid frame; the backward direction runs forward over sequences reversed within their
    lengths. This gives what ``pack_padded_sequence`` gives, but on the plain tensor layout, where
    PyTorch's fused (oneDNN) LSTM kernels apply: on CPU, the backward pass of a packed LSTM with unequal
    lengths was 20x slower (7-9 s instead of 0.35 s for 5 utterances of 4-7 s, 256 units).
    """

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.forward_lstm = nn.LSTM(in_dim, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(in_dim, hidden, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x: (B, T, in); lengths: (B,) >= 1. Returns (B, T, 2 * hidden), zero beyond each length."""
        fwd, _ = self.forward_lstm(x)
        bwd, _ = self.backward_lstm(reverse_padded(x, lengths))
        out = torch.cat([fwd, reverse_padded(bwd, lengths)], -1)
        return out.masked_fill(~lengths_to_mask(lengths, x.size(1))[..., None], 0.0)


def stack_frames(x: Tensor, lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Concatenate each run of ``k`` frames into one, dropping the leftover tail.

    x: (B, T, F) -> (B, T // k, k * F); lengths: (B,) -> lengths // k.
    """
    if k == 1:
        return x, lengths
    b, t, f = x.shape
    t = t // k
    return x[:, : t * k].reshape(b, t, k * f), torch.div(lengths, k, rounding_mode="floor")


class Listener(nn.Module):
    """Frame stacking, ``listener_layers`` BLSTM layers, then ``pyramid_layers`` pyramidal BLSTM layers."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.frame_stack = cfg.frame_stack
        hidden = cfg.listener_hidden
        dim = cfg.n_mels * cfg.frame_stack
        self.layers = nn.ModuleList()
        for _ in range(cfg.listener_layers):
            self.layers.append(BLSTM(dim, hidden))
            dim = 2 * hidden
        self.pyramid = nn.ModuleList()
        for _ in range(cfg.pyramid_layers):
            self.pyramid.append(BLSTM(2 * dim, hidden))
            dim = 2 * hidden
        self.dropout = nn.Dropout(cfg.dropout)
        self.output_dim = dim

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, n_mels) zero beyond each length; lengths: (B,) >= time reduction.

        Returns enc (B, T', 2 * listener_hidden), zero beyond each length, and enc_lengths (B,), with
        T' = T // reduction.
        """
        x, lengths = stack_frames(x, lengths, self.frame_stack)
        for i, layer in enumerate(self.layers):
            x = layer(self.dropout(x) if i > 0 else x, lengths)
        for layer in self.pyramid:
            x, lengths = stack_frames(self.dropout(x), lengths, 2)
            x = layer(x, lengths)
        return self.dropout(x), lengths


# ------------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Additive attention, with location features ("location", "multihead") and one or more heads.

    Energy of head h at frame t: ``w_h . tanh(K_h enc_t + Q_h s + L_h (F_h * a_prev_h)_t)`` where
    ``a_prev_h`` is the head's previous alignment and ``F_h`` a 1-D convolution. The key term does
    not depend on the decoder step, so :meth:`precompute` computes it once per utterance. Several heads
    each attend on their own and their contexts (each projected to ``enc_dim / heads``) are concatenated.

    A step runs over every frame of every beam row, so it uses two exact rewrites from :mod:`asr.ops`:
    scores through a sigmoid instead of tanh (:func:`asr.ops.sigmoid_scores`, the factor 2 folded into
    the keys, the query and the location matrix) and the location convolution and projection folded into
    one matrix (:func:`asr.ops.folded_location_matrix`). The parameters keep their convolution shapes.

    Energies are channels-last, (N, T', attention_dim), the layout of the key projection.
    """

    def __init__(self, cfg: ModelConfig, enc_dim: int, query_dim: int):
        super().__init__()
        self.heads = cfg.attention_heads if cfg.attention == "multihead" else 1
        dim = self.heads * (cfg.attention_dim // self.heads)
        self.key = nn.Linear(enc_dim, dim)
        self.query = nn.Linear(query_dim, dim, bias=False)
        self.score = nn.Conv1d(dim, self.heads, 1, groups=self.heads, bias=False)
        self.location = self.location_proj = None
        self.kernel = cfg.location_kernel
        if cfg.attention != "content":
            channels = self.heads * cfg.location_channels
            self.location = nn.Conv1d(
                self.heads, channels, self.kernel, padding=self.kernel // 2, groups=self.heads, bias=False
            )
            self.location_proj = nn.Conv1d(channels, dim, 1, groups=self.heads, bias=False)
        self.value = None
        if self.heads > 1:
            bound = 1 / math.sqrt(enc_dim)
            self.value = nn.Parameter(torch.empty(self.heads, enc_dim, enc_dim // self.heads))
            nn.init.uniform_(self.value, -bound, bound)

    def precompute(self, enc: Tensor) -> Tensor:
        """Encoder key projection, doubled for the sigmoid form. enc: (N, T', D) -> keys (N, T', attention_dim)."""
        return F.linear(enc, 2 * self.key.weight, 2 * self.key.bias)

    def initial_alignment(self, enc_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform alignment over the valid frames. enc_mask: (N, T') -> (N, heads, T')."""
        uniform = enc_mask.to(dtype) / enc_mask.sum(1, keepdim=True).clamp(min=1)
        return uniform[:, None, :].expand(-1, self.heads, -1).contiguous()

    def _location_matrix(self) -> Tensor:
        """Convolution then projection folded into one map, doubled: (heads, kernel, attention_dim / heads)."""
        return ops.folded_location_matrix(self.location.weight, self.location_proj.weight, self.heads, 2.0)

    def location_energy(self, prev: Tensor) -> Tensor:
        """The location term of the energies: prev (N, heads, T') -> (N, T', attention_dim)."""
        return ops.location_features(prev, self._location_matrix())

    def location_energy_conv(self, prev: Tensor) -> Tensor:
        """:meth:`location_energy` as one grouped convolution: the same numbers, in a form that ONNX
        export takes with a dynamic time axis (a sliding-window view does not export)."""
        matrix = self._location_matrix()  # (H, K, A/H)
        weight = matrix.permute(0, 2, 1).reshape(-1, 1, self.kernel)  # (A, 1, K), head-major like the matmul
        return F.conv1d(prev, weight, padding=self.kernel // 2, groups=self.heads).transpose(1, 2)

    def forward(
        self, query: Tensor, keys: Tensor, enc: Tensor, enc_mask: Tensor, prev: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One attention step.

        query: (N, Q) decoder state; keys: (N, T', attention_dim) from :meth:`precompute`;
        enc: (N, T', D); enc_mask: (N, T') True on valid frames; prev: (N, heads, T') previous alignment.
        Returns context (N, D) and weights (N, heads, T') that sum to 1 over the valid frames and are 0
        on padding.
        """
        return self.attend(self.query(query), keys, partial(torch.bmm, mat2=enc), enc_mask, prev)

    def attend(
        self, q: Tensor, keys: Tensor, contexts, enc_mask: Tensor, prev: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` with the query projection q (N, attention_dim) done and the context product
        given as ``contexts(weights (N, heads, T')) -> (N, heads, D)`` (the training loop passes a
        version with batched gradients)."""
        dim = keys.size(-1)
        energy = torch.add(keys, q.unsqueeze(1), alpha=2)  # twice the energy, for the sigmoid form
        if self.location is not None:
            energy = energy.add_(self.location_energy(prev))
        scores = ops.sigmoid_scores(energy, self.score.weight.view(self.heads, dim // self.heads))
        scores = scores.to(ops.accum_dtype(scores.dtype))
        weights = torch.softmax(scores.masked_fill(~enc_mask[:, None, :], float("-inf")), dim=-1)
        context = contexts(weights)  # (N, heads, D)
        if self.value is not None:
            context = torch.matmul(context.unsqueeze(2), self.value).flatten(1)
        else:
            context = context.squeeze(1)
        return context, weights


# ------------------------------------------------------------------------------------------------
# Speller
# ------------------------------------------------------------------------------------------------


class DecoderState(NamedTuple):
    """Speller state between steps; every tensor has the batch (or beam) on dim 0.

    h, c: (N, decoder_layers, decoder_hidden); context: (N, enc_dim) previous attention context;
    alignment: (N, heads, T') previous attention weights; keys: (N, T', attention_dim) encoder key
    projection (constant across steps, carried here so that beam reordering keeps it aligned).
    """

    h: Tensor
    c: Tensor
    context: Tensor
    alignment: Tensor
    keys: Tensor


def _lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM cell nonlinearity in PyTorch's gate order (i, f, g, o). gates: (N, 4H); c: (N, H)."""
    gates = gates.to(ops.accum_dtype(gates.dtype))  # the cell state accumulates: keep it in fp32
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class _StepWeights(NamedTuple):
    """The Speller's per-step weights, prepared once per sequence (see :meth:`Speller._step_weights`)."""

    embed: Tensor  # (4H, E) embedding columns of cell 0's input weight
    layers: list[ops.SharedOperand]  # per cell: [input; h] -> gates, ([D or H] + H, 4H)
    biases: list[Tensor]  # per cell (4H,)
    query: ops.SharedOperand  # (H, attention_dim)
    contexts: ops.SharedOperand  # enc (N, T', D), batched


class Speller(nn.Module):
    """Attention decoder: embedding, LSTM cells with input feeding, attention, output projection.

    The first cell's input is ``[embedding(y_{i-1}); context_{i-1}]``; the top cell's state queries
    the attention, and the output projection reads ``[state_i; context_i]``. The cells are
    ``nn.LSTMCell`` parameters run by hand, so that the embedding part of cell 0's input product can be
    done for all steps at once and the recurrent weights' gradients once per sequence.
    """

    def __init__(self, cfg: ModelConfig, enc_dim: int):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.decoder_hidden
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.cells = nn.ModuleList([nn.LSTMCell(cfg.embed_dim + enc_dim, hidden)])
        self.cells.extend(nn.LSTMCell(hidden, hidden) for _ in range(cfg.decoder_layers - 1))
        for cell in self.cells:
            # A forget-gate bias of 1 keeps early gradients flowing through the cell state.
            with torch.no_grad():
                cell.bias_ih[hidden : 2 * hidden].fill_(1.0)
                cell.bias_hh[hidden : 2 * hidden].zero_()
        self.attention = Attention(cfg, enc_dim, hidden)
        self.output = nn.Linear(hidden + enc_dim, cfg.vocab_size)
        self.dropout = nn.Dropout(cfg.decoder_dropout)
        self.enc_dim = enc_dim

    # -- pieces shared by step() and the teacher-forced loop, so both compute the same numbers --

    def _step_weights(self, enc: Tensor) -> _StepWeights:
        return _StepWeights(
            embed=self.cells[0].weight_ih[:, : self.cfg.embed_dim],
            layers=[ops.SharedOperand(m) for m in self._layer_matrices()],
            biases=[cell.bias_ih + cell.bias_hh for cell in self.cells],
            query=ops.SharedOperand(self.attention.query.weight.t()),
            contexts=ops.SharedOperand(enc, batched=True),
        )

    def _layer_matrices(self) -> list[Tensor]:
        """Per cell, ``[W_ih (context or input columns); W_hh]`` transposed: ([D or H] + H, 4H).

        In the autocast dtype when autocast is on; cached while no gradient is recorded, so that
        step-by-step decoding does not copy the weights at every step (:func:`asr.ops.cached_no_grad`).
        """
        e = self.cfg.embed_dim
        params = [p for cell in self.cells for p in (cell.weight_ih, cell.weight_hh)]

        def build() -> list[Tensor]:
            dtype = ops.compute_dtype(params[0].device.type) or params[0].dtype
            return [
                torch.cat([cell.weight_ih[:, e:] if i == 0 else cell.weight_ih, cell.weight_hh], 1).t().to(dtype)
                for i, cell in enumerate(self.cells)
            ]

        return ops.cached_no_grad(self, "_matrices", params, build)

    def _embed_gates(self, tokens: Tensor, weights: _StepWeights) -> Tensor:
        """Input-side gates of cell 0 from the tokens: (...,) -> (..., 4H), bias of cell 0 included."""
        return F.linear(self.dropout(self.embed(tokens)), weights.embed, weights.biases[0])

    def _cells(
        self,
        embed_gates: Tensor,
        weights: _StepWeights,
        h: list[Tensor],
        c: list[Tensor],
        context: Tensor,
    ) -> Tensor:
        """Advance every cell one step, in place in the lists ``h`` and ``c``; returns the top state (N, H)."""
        for layer, product in enumerate(weights.layers):
            x = context if layer == 0 else self.dropout(h[layer - 1])
            add = embed_gates if layer == 0 else weights.biases[layer]
            h[layer], c[layer] = _lstm_pointwise(
                product.product(torch.cat([x, h[layer]], 1), add), c[layer]
            )
        return h[-1]

    def _attend(
        self, top: Tensor, weights: _StepWeights, keys: Tensor, enc_mask: Tensor, prev: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.attention.attend(
            weights.query.product(top), keys, weights.contexts.product, enc_mask, prev
        )

    def _logits(self, top: Tensor, context: Tensor) -> Tensor:
        """(..., H), (..., D) -> (..., V)."""
        return self.output(self.dropout(torch.cat([top, context], -1)))

    # -- public API --

    def init_state(self, enc: Tensor, enc_lengths: Tensor) -> DecoderState:
        """State before the first step. enc: (N, T', D); enc_lengths: (N,)."""
        n = enc.size(0)
        dtype = ops.accum_dtype(enc.dtype)
        zeros = enc.new_zeros(n, len(self.cells), self.cfg.decoder_hidden, dtype=dtype)
        mask = lengths_to_mask(enc_lengths, enc.size(1))
        return DecoderState(
            h=zeros,
            c=zeros.clone(),
            context=enc.new_zeros(n, self.enc_dim),
            alignment=self.attention.initial_alignment(mask, dtype),
            keys=self.attention.precompute(enc),
        )

    def step(
        self, tokens: Tensor, state: DecoderState, enc: Tensor, enc_mask: Tensor
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoding step.

        tokens: (N,) long previous tokens (SOS_ID at the start); enc: (N, T', D); enc_mask: (N, T') bool,
        True on valid frames. Returns log_probs (N, V), the new state, and attention (N, T') (mean over
        heads).
        """
        weights = self._step_weights(enc)
        h, c = list(state.h.unbind(1)), list(state.c.unbind(1))
        top = self._cells(self._embed_gates(tokens, weights), weights, h, c, state.context)
        context, alignment = self._attend(top, weights, state.keys, enc_mask, state.alignment)
        logits = self._logits(top, context)
        log_probs = torch.log_softmax(logits.to(ops.accum_dtype(logits.dtype)), dim=-1)
        new_state = DecoderState(
            torch.stack(h, 1), torch.stack(c, 1), context, alignment, state.keys
        )
        return log_probs, new_state, alignment.mean(1)

    def forward(self, enc: Tensor, enc_lengths: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoding of whole sequences (with scheduled sampling in training mode).

        enc: (B, T', D); enc_lengths: (B,); inputs: (B, S) decoder inputs (SOS_ID then the tokens; any
        valid id on padding). Returns logits (B, S, V) and attention (B, S, T') (mean over heads).
        """
        state = self.init_state(enc, enc_lengths)
        mask = lengths_to_mask(enc_lengths, enc.size(1))
        weights = self._step_weights(enc)
        h, c = list(state.h.unbind(1)), list(state.c.unbind(1))
        context, alignment, keys = state.context, state.alignment, state.keys
        sampling = self.training and self.cfg.sampling_prob > 0
        # Without sampling every input is known: one big matmul for all steps instead of one per step.
        all_gates = None if sampling else self._embed_gates(inputs, weights).unbind(1)
        tops, contexts, alignments, logits = [], [], [], []
        token = inputs[:, 0]
        for t in range(inputs.size(1)):
            if sampling:
                if t > 0:
                    feed_back = (
                        torch.rand(token.shape, device=token.device) < self.cfg.sampling_prob
                    )
                    token = torch.where(feed_back, logits[-1].detach().argmax(-1), inputs[:, t])
                gates = self._embed_gates(token, weights)
            else:
                gates = all_gates[t]
            top = self._cells(gates, weights, h, c, context)
            context, alignment = self._attend(top, weights, keys, mask, alignment)
            if sampling:
                logits.append(self._logits(top, context))
            tops.append(top)
            contexts.append(context)
            alignments.append(alignment)
        if sampling:
            out = torch.stack(logits, 1)
        else:
            # One projection for all steps after the loop.
            out = self._logits(torch.stack(tops, 1), torch.stack(contexts, 1))
        return out, torch.stack(alignments, 1).mean(2)


# ------------------------------------------------------------------------------------------------
# LAS
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelOutput:
    """Result of :meth:`LAS.forward`.

    loss, att_loss, ctc_loss: scalar tensors (sums over tokens / batch size; a part that the config
    leaves out is a zero tensor). n_correct, n_tokens: attention-decoder argmax hits and target tokens
    (EOS included). attention: (B, U + 1, T') detached, or None without a speller.
    """

    loss: Tensor
    att_loss: Tensor
    ctc_loss: Tensor
    n_correct: int
    n_tokens: int
    attention: Tensor | None


def decoder_io(targets: Tensor, target_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Decoder inputs and outputs from padded targets.

    targets: (B, U) padded with IGNORE_ID; target_lengths: (B,). Returns inputs (B, U + 1) =
    ``[SOS_ID] + tokens`` (EOS_ID on padding, a valid id whose output is ignored) and outputs (B, U + 1)
    = ``tokens + [EOS_ID]`` padded with IGNORE_ID.
    """
    b, u = targets.shape
    valid = lengths_to_mask(target_lengths, u)
    tokens = targets.masked_fill(~valid, EOS_ID)
    sos = targets.new_full((b, 1), SOS_ID)
    inputs = torch.cat([sos, tokens], 1)
    outputs = torch.cat(
        [targets.masked_fill(~valid, IGNORE_ID), targets.new_full((b, 1), IGNORE_ID)], 1
    )
    outputs[torch.arange(b, device=targets.device), target_lengths] = EOS_ID
    return inputs, outputs


class LAS(nn.Module):
    """Listen-Attend-Spell with joint CTC, global CMVN and SpecAugment (training mode only).

    ``specaug`` (an ``asr.specaugment.SpecAugmentConfig``, the ``specaug`` section of an experiment)
    decides the augmentation, its policy included; None builds a model without SpecAugment.
    """

    def __init__(self, cfg: ModelConfig, specaug=None):
        super().__init__()
        if cfg.vocab_size <= 3:
            raise ValueError(
                f"ModelConfig.vocab_size must be > 3, got {cfg.vocab_size} (set it from the tokenizer)"
            )
        self.cfg = cfg
        self.register_buffer("cmvn_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("cmvn_istd", torch.ones(cfg.n_mels))
        self.specaug = _build_specaug(specaug)
        self.listener = Listener(cfg)
        enc_dim = self.listener.output_dim
        self.decoder = Speller(cfg, enc_dim) if cfg.ctc_weight < 1.0 else None
        self.ctc = nn.Linear(enc_dim, cfg.vocab_size) if cfg.ctc_weight > 0.0 else None

    @property
    def time_reduction(self) -> int:
        """Input frames per encoder frame."""
        return self.cfg.time_reduction

    def set_cmvn(self, mean: Tensor, std: Tensor) -> None:
        """Set the global feature normalisation. mean, std: (n_mels,)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.cfg.n_mels or std.numel() != self.cfg.n_mels:
            raise ValueError(
                f"CMVN has {mean.numel()}/{std.numel()} dims, the model expects {self.cfg.n_mels}"
            )
        self.cmvn_mean.copy_(mean)
        # Floor the std so that a constant feature dimension does not blow up.
        self.cmvn_istd.copy_(1.0 / std.clamp(min=1e-5))

    def encode(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Normalise, augment (training only) and listen.

        feats: (B, T, n_mels), for a ``speaker_cmn`` model already minus each speaker's mean (the caller's
        part, see ``ModelConfig.speaker_cmn``); lengths: (B,) long. Returns enc (B, T', 2 * listener_hidden) and
        enc_lengths (B,) = output_lengths(lengths). Values on padded frames never affect valid outputs.
        """
        lengths = lengths.to(device=feats.device, dtype=torch.long)
        if self.cfg.utterance_cmn:
            x = (feats - utterance_mean(feats, lengths)) * self.cmvn_istd
        elif self.cfg.speaker_cmn:
            x = feats * self.cmvn_istd
        else:
            x = (feats - self.cmvn_mean) * self.cmvn_istd
        if self.training and self.specaug is not None:
            x = self.specaug(x, lengths)
        r = self.cfg.time_reduction
        if x.size(1) < r:
            x = F.pad(x, (0, 0, 0, r - x.size(1)))
        # Zero the padding (whatever the caller padded with) so utterances shorter than the reduction
        # see the same zeros alone as inside a batch.
        x = x.masked_fill(~lengths_to_mask(lengths, x.size(1))[..., None], 0.0)
        return self.listener(x, lengths.clamp(min=r))

    def ctc_log_probs(self, enc: Tensor) -> Tensor:
        """CTC log-probabilities. enc: (B, T', D) -> (B, T', V), log_softmax over V."""
        if self.ctc is None:
            raise RuntimeError("this model has no CTC head (ctc_weight == 0)")
        logits = self.ctc(enc)
        return torch.log_softmax(logits.to(ops.accum_dtype(logits.dtype)), dim=-1)

    def forward(
        self, feats: Tensor, feat_lengths: Tensor, targets: Tensor, target_lengths: Tensor
    ) -> ModelOutput:
        """Training loss of a batch.

        feats: (B, T, n_mels); feat_lengths: (B,); targets: (B, U) token ids padded with IGNORE_ID
        (no SOS/EOS); target_lengths: (B,).
        """
        enc, enc_lengths = self.encode(feats, feat_lengths)
        batch = feats.size(0)
        zero = enc.new_zeros((), dtype=ops.accum_dtype(enc.dtype))
        ctc_loss, att_loss, attention = zero, zero, None
        n_correct, n_tokens = 0, 0
        if self.ctc is not None:
            ctc_loss = self._ctc_loss(enc, enc_lengths, targets, target_lengths) / batch
        if self.decoder is not None:
            inputs, outputs = decoder_io(targets, target_lengths)
            logits, attention = self.decoder(enc, enc_lengths, inputs)
            att_loss = (
                F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)).to(ops.accum_dtype(logits.dtype)),
                    outputs.reshape(-1),
                    ignore_index=IGNORE_ID,
                    label_smoothing=self.cfg.label_smoothing,
                    reduction="sum",
                )
                / batch
            )
            valid = outputs != IGNORE_ID
            n_correct = int((logits.detach().argmax(-1).eq(outputs) & valid).sum())
            n_tokens = int(valid.sum())
            attention = attention.detach()
        else:
            n_tokens = int(target_lengths.sum()) + batch
        w = self.cfg.ctc_weight
        loss = w * ctc_loss + (1.0 - w) * att_loss
        return ModelOutput(loss, att_loss, ctc_loss, n_correct, n_tokens, attention)

    def _ctc_loss(
        self, enc: Tensor, enc_lengths: Tensor, targets: Tensor, target_lengths: Tensor
    ) -> Tensor:
        """Summed CTC loss over the batch."""
        log_probs = self.ctc_log_probs(enc).transpose(0, 1)  # (T', B, V) as F.ctc_loss wants
        valid = lengths_to_mask(target_lengths, targets.size(1))
        return F.ctc_loss(
            log_probs,
            targets[valid],
            enc_lengths,
            target_lengths,
            blank=BLANK_ID,
            reduction="sum",
            zero_infinity=True,
        )


def _build_specaug(specaug_cfg) -> nn.Module | None:
    if specaug_cfg is None or specaug_cfg.policy == "none":
        return None
    from asr.specaugment import SpecAugment

    return SpecAugment(specaug_cfg)
