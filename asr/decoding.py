"""Search: one choice point, batched greedy and beam search with joint CTC prefix scoring, LM fusion
and loop guards. Search only: nothing here reads audio, loads a model or writes a file.

:func:`search` is the one place that picks the search from :class:`DecodeOptions`: ``beam_size == 1``
with ``ctc_weight == 0`` and no LM in use (none given, or ``lm_weight == 0``) runs :func:`greedy_search`;
everything else runs :func:`beam_search`, so ``beam_size=1`` with CTC or an LM is a beam of one that
still scores with them. ``asr decode``, ``asr transcribe``, validation during training and the
benchmark all call it.

A beam search keeps ``beam_size`` live hypotheses per utterance, with batch and beam folded into one
dimension of ``N = batch * beam`` rows so that every step is one batched call of the attention decoder,
the CTC prefix scorer and the LM. A hypothesis that emits EOS (or is stopped by a guard) is moved aside
into its utterance's finished list, and its row is marked dead (score ``-inf``) until the next step
refills it. An utterance is done once no live row can still beat its ``nbest``-th finished hypothesis
(exact while scores only decrease), and its rows then leave the batch. The score of a hypothesis is

    sum over its tokens of (1 - ctc_weight) * log p_att + ctc_weight * delta log p_ctc_prefix
                          + lm_weight * log p_lm + length_bonus

and its final ranking score divides that by ``len(tokens + EOS) ** length_penalty``.

Loop guards stop hypotheses that have lost their place in the audio: one whose tail repeats an n-gram
more than ``max_ngram_repeats`` times in a row, one whose attention peak has not moved forward for
``attention_stall_steps`` emitted tokens, or (if enabled) one whose attention peak jumps back more than
``attention_backtrack`` frames. A stopped hypothesis is finished with its repeated tail cut off; every
firing is counted per utterance in :attr:`Hypothesis.guards`. Greedy and beam search end hypotheses
with the same code (:func:`_stopped_rows`): EOS, the length limits and the guards.

References: Watanabe et al. 2017, "Hybrid CTC/attention architecture for end-to-end speech recognition"
(CTC prefix score); Chorowski and Jaitly 2017, "Towards better decoding and language model integration
in sequence to sequence models" (EOS threshold).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asr.align import ctc_greedy
from asr.backends import as_array
from asr.tokenizer import BLANK_ID, EOS_ID, SOS_ID

NEG_INF = float("-inf")
GUARD_NAMES = ("ngram_repeat", "attention_stall", "attention_backtrack", "max_len")


@dataclass(frozen=True)
class DecodeOptions:
    """Search settings. Override with :func:`asr.config.replace` (type-checked ``dataclasses.replace``).

    ``eos_threshold``: EOS may end a hypothesis only if ``log p_att(EOS) >= eos_threshold * max over
    other tokens of log p_att`` (log-probs are <= 0, so 1.5 lets EOS through when it is nearly as likely
    as the best token; 0 disables the check). ``min_len_ratio``/``max_len_ratio`` bound the number of
    output tokens by that fraction of the encoder length; at the maximum, EOS is forced.
    ``pre_beam_ratio``: each hypothesis extends only its ``ceil(pre_beam_ratio * beam_size)`` best tokens
    by attention (+ LM) score before the CTC prefix scorer sees them. Guards set to 0 are disabled.
    """

    beam_size: int = 10
    ctc_weight: float = 0.3
    lm_weight: float = 0.3  # LM shallow-fusion weight; used only when an LM is passed to the search
    length_penalty: float = 0.0  # alpha: final score = score / num_tokens ** alpha
    length_bonus: float = 0.0  # added for every emitted token, EOS included
    eos_threshold: float = 1.5
    min_len_ratio: float = 0.0
    max_len_ratio: float = 1.0
    nbest: int = 1
    pre_beam_ratio: float = 1.5
    max_ngram_repeats: int = 4  # stop when an n-gram (n <= ngram_size) repeats more often in a row
    ngram_size: int = 4
    attention_stall_steps: int = 8  # stop after this many tokens with no forward attention move
    attention_backtrack: int = 0  # stop when the attention peak jumps back more frames than this
    keep_attention: bool = False  # return each hypothesis' attention weights (steps, T')
    # fp32 | bf16 | auto: bf16 autocast of the encoder and the search (products in bf16, scores in fp32)
    # where the device runs bf16 natively (CUDA, or a CPU with avx512_bf16/amx_bf16); auto = bf16 there.
    dtype: str = "fp32"

    def __post_init__(self):
        if self.beam_size < 1 or self.nbest < 1:
            raise ValueError("beam_size and nbest must be >= 1")
        if self.nbest > self.beam_size:
            raise ValueError(f"nbest ({self.nbest}) cannot exceed beam_size ({self.beam_size})")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.lm_weight < 0 or self.eos_threshold < 0 or self.length_penalty < 0:
            raise ValueError("lm_weight, eos_threshold and length_penalty must be >= 0")
        if not 0.0 <= self.min_len_ratio <= self.max_len_ratio or self.max_len_ratio <= 0:
            raise ValueError("need 0 <= min_len_ratio <= max_len_ratio and max_len_ratio > 0")
        if self.pre_beam_ratio < 1.0:
            raise ValueError("pre_beam_ratio must be >= 1")
        if self.dtype not in ("fp32", "bf16", "auto"):
            raise ValueError(f"dtype must be fp32, bf16 or auto, got {self.dtype!r}")
        if min(self.max_ngram_repeats, self.ngram_size, self.attention_stall_steps, self.attention_backtrack) < 0:
            raise ValueError("guard settings must be >= 0 (0 disables)")


@dataclass
class Hypothesis:
    """One finished hypothesis.

    ``tokens`` exclude SOS/EOS. ``score`` is the final ranking score (length-normalised combination);
    ``log_prob``, ``ctc_score`` and ``lm_score`` are the unweighted sums of each scorer (0 when unused).
    ``guards`` counts the guard firings of the whole utterance's search; ``stopped_by`` says how this
    hypothesis ended ("eos" or a guard name). ``attention``: (steps, T') when requested.
    """

    tokens: list[int]
    score: float
    log_prob: float = 0.0
    ctc_score: float = 0.0
    lm_score: float = 0.0
    guards: dict[str, int] = field(default_factory=dict)
    stopped_by: str = "eos"
    attention: np.ndarray | None = None  # (steps, T') float32


def uses_greedy(options: DecodeOptions, lm: Any = None, context: Any = None) -> bool:
    """The rule of :func:`search`: beam 1 with no CTC weight, no LM in use and no hotwords is greedy search."""
    return (options.beam_size == 1 and options.ctc_weight == 0 and (lm is None or options.lm_weight == 0)
            and context is None)


def search(model: Any, enc: Any, enc_lengths: Any, options: DecodeOptions,
           lm: Any = None, context: Any = None) -> list[list[Hypothesis]]:
    """Decode encoder output with the search that ``options`` ask for (see :func:`uses_greedy`).

    model: a backend (:mod:`asr.backends`: torch or onnxruntime) or an ``asr.model.LAS``; enc: (B, T', D)
    encoder output in the backend's array type; enc_lengths: (B,). ``lm``: an LM for shallow fusion (see
    :func:`beam_search`) or None; ``context``: an :class:`asr.context.ContextGraph` of hotwords or None.
    Returns per utterance up to ``options.nbest`` hypotheses, best first.
    """
    if uses_greedy(options, lm, context):
        return [[h] for h in greedy_search(model, enc, enc_lengths, options)]
    return beam_search(model, enc, enc_lengths, options, lm, context)


# --------------------------------------------------------------------------------------------------
# Arrays and backends
# --------------------------------------------------------------------------------------------------


def as_backend(model: Any) -> Any:
    """The search's view of a model: a backend (:mod:`asr.backends`) as is, an ``asr.model.LAS`` adapted."""
    if model is None or hasattr(model, "take"):
        return model
    from asr.backends.torch_backend import TorchModel

    return TorchModel(model)


def as_lm_backend(lm: Any) -> Any:
    """A fusion LM as the search calls it: a backend LM as is, an ``asr.lm.LSTMLM`` adapted."""
    if lm is None or hasattr(lm, "take"):
        return lm
    from asr.backends.torch_backend import TorchLM

    return TorchLM(lm)


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest values per row, best first: (values (N, k), indices (N, k)). Ties go to the lower index."""
    k = min(k, x.shape[1])
    if k < x.shape[1]:
        part = np.argpartition(-x, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(x, part, 1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, 1)
    else:
        idx = np.argsort(-x, axis=1, kind="stable")
    return np.take_along_axis(x, idx, 1), idx


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``, -inf where every term is -inf."""
    m = x.max(axis=axis)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(x - np.expand_dims(safe, axis)).sum(axis=axis)) + safe


# --------------------------------------------------------------------------------------------------
# Length limits, EOS rules and guards shared by greedy and beam search
# --------------------------------------------------------------------------------------------------


def length_limits(enc_lengths: Any, options: DecodeOptions) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(min_len, max_len)`` in output tokens (EOS excluded), each (batch,) int64."""
    lengths = as_array(enc_lengths, np.float64)
    max_len = np.maximum(np.ceil(lengths * options.max_len_ratio).astype(np.int64), 1)
    min_len = np.minimum(np.floor(lengths * options.min_len_ratio).astype(np.int64), max_len)
    return min_len, max_len


def _eos_mask(att_logp: np.ndarray, step: int, min_len: np.ndarray, max_len: np.ndarray,
              options: DecodeOptions) -> np.ndarray:
    """Additive mask (N, V) for output step ``step`` (0-based; the step emits token number step+1).

    Blank is never emitted. EOS is forbidden before ``min_len`` tokens and, with an ``eos_threshold``,
    when the attention decoder does not rate it nearly as high as its best other token; once
    ``max_len`` tokens are out, EOS is the only choice.
    """
    n, vocab = att_logp.shape
    mask = np.zeros((n, vocab), dtype=att_logp.dtype)
    mask[:, BLANK_ID] = NEG_INF
    eos_ok = min_len <= step
    if options.eos_threshold > 0:
        others = att_logp.copy()
        others[:, EOS_ID] = NEG_INF
        others[:, BLANK_ID] = NEG_INF
        eos_ok &= att_logp[:, EOS_ID] >= options.eos_threshold * others.max(axis=1)
    forced = max_len <= step
    mask[:, EOS_ID] = np.where(eos_ok | forced, 0.0, NEG_INF)
    mask[forced] = NEG_INF
    mask[forced, EOS_ID] = 0.0
    return mask


def _repeat_cut(history: np.ndarray, options: DecodeOptions) -> np.ndarray:
    """Rows whose tail repeats an n-gram more than ``max_ngram_repeats`` times in a row.

    history: (N, L) tokens emitted so far. Returns (N,) int64: how many trailing tokens to cut (all
    copies but the first), 0 where the guard does not fire.
    """
    reps = options.max_ngram_repeats
    cut = np.zeros(history.shape[0], dtype=np.int64)
    if reps == 0:
        return cut
    length = history.shape[1]
    for n in range(1, options.ngram_size + 1):
        span = n * (reps + 1)
        if span > length:
            break
        tail = history[:, length - span:].reshape(-1, reps + 1, n)
        fired = (tail == tail[:, -1:, :]).all(axis=2).all(axis=1)
        cut = np.where(fired & (cut == 0), n * reps, cut)
    return cut


@dataclass
class _AttentionTrack:
    """Per-row attention progress: furthest peak so far and tokens emitted since it last advanced."""

    furthest: np.ndarray  # (N,) int64
    stalled: np.ndarray  # (N,) int64

    @classmethod
    def start(cls, n: int) -> _AttentionTrack:
        return cls(np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64))

    def select(self, idx: np.ndarray) -> _AttentionTrack:
        return _AttentionTrack(self.furthest[idx], self.stalled[idx])

    def update(self, peak: np.ndarray, options: DecodeOptions) -> tuple[np.ndarray, np.ndarray]:
        """Advance with this step's peaks (N,); return (stall fired, backtrack fired) bool (N,)."""
        advanced = peak > self.furthest
        back = self.furthest - peak
        self.furthest = np.maximum(self.furthest, peak)
        self.stalled = np.where(advanced, 0, self.stalled + 1)
        stall = np.zeros_like(advanced)
        if options.attention_stall_steps > 0:
            stall = self.stalled >= options.attention_stall_steps
        backtrack = np.zeros_like(advanced)
        if options.attention_backtrack > 0:
            backtrack = back > options.attention_backtrack
        return stall, backtrack


def _guard_cut(history: np.ndarray, track: _AttentionTrack | None, peak: np.ndarray | None,
               options: DecodeOptions) -> tuple[np.ndarray, list[str | None]]:
    """Apply every guard to every row (a row that just emitted EOS ends normally whatever they say).

    history: (N, L) tokens including this step's; peak: (N,) this step's attention argmax. Returns
    (cut (N,) int64: tokens to drop from the tail, guard name per row or None).
    """
    cut = _repeat_cut(history, options)
    names: list[str | None] = [None] * history.shape[0]
    fired = cut > 0
    if track is not None and peak is not None:
        stall, backtrack = track.update(peak, options)
        # A stalled hypothesis emitted its last tokens without reading new audio: drop them.
        stall_cut = np.minimum(track.stalled, history.shape[1] - 1)
        cut = np.where(~fired & stall, stall_cut, cut)
        cut = np.where(~fired & ~stall & backtrack, 1, cut)
        for i in np.flatnonzero(~fired & stall).tolist():
            names[i] = "attention_stall"
        for i in np.flatnonzero(~fired & ~stall & backtrack).tolist():
            names[i] = "attention_backtrack"
    for i in np.flatnonzero(fired).tolist():
        names[i] = "ngram_repeat"
    return cut, names


def _stopped_rows(history: np.ndarray, tokens: np.ndarray, cut: np.ndarray, names: list[str | None],
                  live: np.ndarray, step: int, max_len: np.ndarray) -> list[tuple[int, list[int], str]]:
    """The rows that end at this step, shared by greedy and beam search.

    history: (N, L) tokens including this step's ``tokens`` (N,); cut/names from :func:`_guard_cut`;
    live: (N,) bool rows still searching; max_len: (N,). Returns ``(row, kept tokens, stopped_by)``:
    EOS is dropped from the tokens, a guard's repeated tail is cut off, and an EOS forced by the length
    limit reads "max_len".
    """
    is_eos = tokens == EOS_ID
    stop = live & (is_eos | np.array([name is not None for name in names], dtype=bool))
    out = []
    for i in np.flatnonzero(stop).tolist():
        keep = history.shape[1] - (1 if is_eos[i] else int(cut[i]))
        stopped = "eos" if is_eos[i] else names[i]
        if is_eos[i] and step >= int(max_len[i]):
            stopped = "max_len"
        out.append((i, history[i, :keep].tolist(), stopped))
    return out


def final_score(raw: float, num_tokens: int, options: DecodeOptions) -> float:
    """Length-normalised ranking score; ``num_tokens`` counts the closing EOS."""
    if options.length_penalty == 0:
        return raw
    return raw / max(num_tokens, 1) ** options.length_penalty


# --------------------------------------------------------------------------------------------------
# Greedy search
# --------------------------------------------------------------------------------------------------


def greedy_search(model: Any, enc: Any, enc_lengths: Any, options: DecodeOptions) -> list[Hypothesis]:
    """Batched greedy decoding with the attention decoder alone (CTC and LM weights are ignored).

    model: a backend (:mod:`asr.backends`) or an ``asr.model.LAS``; enc: (B, T', D) encoder output in the
    backend's array type; enc_lengths: (B,). Applies the same EOS rules, length limits and loop guards
    as :func:`beam_search`, so that beam 1 with ``ctc_weight=0`` returns the same hypotheses.
    """
    model = as_backend(model)
    enc_lengths = as_array(enc_lengths, np.int64)
    if not model.has_speller:  # a pure-CTC model: best path
        lp = model.ctc_log_probs(enc)
        valid = np.arange(lp.shape[1])[None, :] < enc_lengths[:, None]
        best = np.where(valid, lp.max(axis=-1), 0.0).sum(1)
        return [Hypothesis(t, float(s), ctc_score=float(s), guards=dict.fromkeys(GUARD_NAMES, 0))
                for t, s in zip(ctc_greedy(lp, enc_lengths), best.tolist())]
    batch = enc_lengths.size
    mask = model.enc_mask(enc, enc_lengths)
    state = model.init_state(enc, enc_lengths)
    min_len, max_len = length_limits(enc_lengths, options)
    prev = np.full(batch, SOS_ID, dtype=np.int64)
    score = np.zeros(batch, dtype=np.float64)
    att_sum = np.zeros(batch, dtype=np.float64)
    history = np.zeros((batch, 0), dtype=np.int64)
    track = _AttentionTrack.start(batch)
    results: list[Hypothesis | None] = [None] * batch
    pending = np.ones(batch, dtype=bool)
    attn_steps: list[np.ndarray] = []
    step = 0
    while pending.any():
        logp, state, attention = model.step(prev, state, enc, mask)
        if options.keep_attention:
            attn_steps.append(attention)
        logp = logp + _eos_mask(logp, step, min_len, max_len, options)
        token = logp.argmax(axis=1)
        best = logp[np.arange(batch), token].astype(np.float64)
        score = score + best + options.length_bonus
        att_sum = att_sum + best
        history = np.concatenate([history, token[:, None]], axis=1)
        cut, names = _guard_cut(history, track, attention.argmax(axis=1), options)
        for i, kept, stopped in _stopped_rows(history, token, cut, names, pending, step, max_len):
            guards = dict.fromkeys(GUARD_NAMES, 0)
            if stopped != "eos":
                guards[stopped] = 1
            att = np.stack([a[i] for a in attn_steps]) if attn_steps else None
            results[i] = Hypothesis(kept, final_score(float(score[i]), len(kept) + 1, options),
                                    log_prob=float(att_sum[i]), guards=guards, stopped_by=stopped, attention=att)
            pending[i] = False
        prev = token
        step += 1
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------------------------------
# CTC prefix scoring
# --------------------------------------------------------------------------------------------------


class CTCPrefixScorer:
    """Vectorised CTC prefix scores (Watanabe et al. 2017) for N hypotheses at once, in log space.

    For a prefix g, ``r[t, 0]``/``r[t, 1]`` are the log-probabilities that frames 0..t emit exactly g,
    ending in a non-blank / blank frame. Extending g by c follows
    ``r_n^h[t] = (r_n^h[t-1] + phi[t-1]) x_t(c)`` and ``r_b^h[t] = (r_b^h[t-1] + r_n^h[t-1]) x_t(blank)``
    with ``phi = r_b^g + r_n^g`` (only ``r_b^g`` when c repeats g's last token). The loop over frames is
    in Python, but every iteration updates all N rows and C candidates in one array op.

    log_probs: (B, T', V) CTC log-posteriors of B utterances; lengths: (B,) valid frames;
    rows: (N,) utterance of each hypothesis row (default: one row per utterance). The posteriors are
    kept once per utterance, not per row, so a wide beam over a large vocabulary stays small.
    """

    def __init__(self, log_probs: Any, lengths: Any, rows: Any = None):
        lp = np.ascontiguousarray(as_array(log_probs, np.float32).transpose(1, 0, 2))  # (T, B, V)
        frames, batch, _ = lp.shape
        self.utt = np.arange(batch) if rows is None else as_array(rows, np.int64)
        lengths = np.clip(as_array(lengths, np.int64), 1, frames)
        valid = np.arange(frames)[:, None] < lengths[None, :]  # (T, B)
        # Padding frames are set to "certainly blank", so the recursion carries each row's final value
        # through them unchanged and the full-sequence score can be read at the last frame.
        self.lp = np.where(valid[:, :, None], lp, np.float32(0.0))
        self.lp[:, :, 1:] = np.where(valid[:, :, None], self.lp[:, :, 1:], np.float32(NEG_INF))
        n = self.utt.size
        self.r = np.full((frames, 2, n), NEG_INF, dtype=np.float32)  # (T, [non-blank, blank], N)
        self.r[:, 1] = self.lp[:, :, BLANK_ID].cumsum(0)[:, self.utt]
        self.last = np.full(n, SOS_ID, dtype=np.int64)
        self.num_tokens = 0
        self.prefix = np.zeros(n, dtype=np.float64)  # log psi(g); the empty prefix has psi = 1

    def full_score(self) -> np.ndarray:
        """log p(g | x) of each row's whole prefix as a complete labelling: (N,) float64."""
        return np.logaddexp(self.r[-1, 0], self.r[-1, 1]).astype(np.float64)

    def extend(self, cands: Any) -> tuple[np.ndarray, np.ndarray]:
        """Prefix scores of every row extended by each of its candidates.

        cands: (N, C) token ids. Returns psi (N, C) float64, the log prefix probabilities (the full
        sequence probability for EOS candidates), and r (T', 2, N, C) for :meth:`select`.
        """
        cands = as_array(cands, np.int64)
        frames, _, n = self.r.shape
        c = cands.shape[1]
        vocab = self.lp.shape[2]
        # z[t] = (phi[t], r_n[t], r_b[t]): laid out so that the two log-additions of a frame read
        # z[t-1, 0:2] against z[t-1, 1:3] and write z[t, 1:3], all views -- two array ops per frame.
        z = np.empty((frames, 3, n, c), dtype=np.float32)
        x = np.take(self.lp.reshape(frames, -1), (self.utt[:, None] * vocab + cands).ravel(), axis=1)
        x = x.reshape(frames, n, c)
        blank = self.lp[:, self.utt, BLANK_ID][:, :, None]  # (T, N, 1)
        r_sum = np.logaddexp(self.r[:, 0], self.r[:, 1])  # (T, N)
        z[:, 0] = np.where((cands == self.last[:, None])[None], self.r[:, 1, :, None], r_sum[:, :, None])
        z[:, 1:] = NEG_INF
        if self.num_tokens == 0:
            z[0, 1] = x[0]
        emit = np.empty((frames, 2, n, c), dtype=np.float32)
        emit[:, 0] = x
        emit[:, 1] = blank
        state, feed = z[:, 1:], z[:, :2]
        # A prefix of L tokens needs L frames: r is -inf before frame L-1, so start there.
        for t in range(max(1, self.num_tokens), frames):
            out = state[t]
            np.logaddexp(state[t - 1], feed[t - 1], out=out)
            out += emit[t]
        phi_prev = np.empty((frames, n, c), dtype=np.float32)
        phi_prev[0] = 0.0 if self.num_tokens == 0 else NEG_INF
        phi_prev[1:] = z[:-1, 0]
        psi = _logsumexp(phi_prev + x, axis=0).astype(np.float64)  # padding frames have x = -inf
        psi = np.where(cands == EOS_ID, self.full_score()[:, None], psi)
        psi[cands == BLANK_ID] = NEG_INF
        return psi, z[:, 1:]

    def keep(self, rows: np.ndarray) -> None:
        """Keep only rows ``rows`` (N',) unchanged (the others' utterances are done)."""
        self.r = self.r[:, :, rows]
        self.utt = self.utt[rows]
        self.last = self.last[rows]
        self.prefix = self.prefix[rows]

    def select(self, rows: np.ndarray, cols: np.ndarray, psi: np.ndarray, r: np.ndarray, tokens: np.ndarray) -> None:
        """Keep the extensions ``(rows[i], cols[i])`` as the new rows (new N = len(rows))."""
        self.r = np.ascontiguousarray(r[:, :, rows, cols])
        self.utt = self.utt[rows]
        self.prefix = psi[rows, cols]
        self.last = tokens.copy()
        self.num_tokens += 1


# --------------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """Per-row state of the live rows (N = live utterances * beam), reordered together every step.

    Score-keeping arrays are numpy; the decoder's inputs and state (enc, mask, dec_state, lm_state) are
    whatever the backend keeps, reordered by its ``take``.
    """

    utt: np.ndarray  # (N,) original utterance index
    score: np.ndarray  # (N,) float64 raw combined score, -inf on dead rows
    att: np.ndarray  # (N,) float64 sum of attention log-probs
    lm: np.ndarray  # (N,) float64 sum of LM log-probs
    history: np.ndarray  # (N, L) emitted tokens
    min_len: np.ndarray  # (N,) int64
    max_len: np.ndarray  # (N,) int64
    attention: np.ndarray | None = None  # (N, L, T') when kept
    enc: Any = None  # (N, T', D) decoder memory
    mask: Any = None  # (N, T') bool
    dec_state: Any = None
    lm_state: Any = None
    track: _AttentionTrack | None = None
    ctx: np.ndarray | None = None  # (N,) int64 hotword trie node (asr.context), when biasing

    def select(self, idx: np.ndarray, model: Any, lm: Any, compact: bool = False) -> _Rows:
        """Rows ``idx`` (N',). ``compact``: rows may come from other utterances' slots (drop finished ones).

        Without ``compact`` every row is refilled from a row of its own utterance, so the backend may
        keep the fields that depend on the utterance only (the encoder and its key projection).
        """
        enc, mask, dec_state = self.enc, self.mask, None
        if model is not None:
            if compact:
                enc, mask = model.take(enc, idx), model.take(mask, idx)
            dec_state = model.take(self.dec_state, idx, within_utterance=not compact)
        return _Rows(self.utt[idx], self.score[idx], self.att[idx], self.lm[idx], self.history[idx],
                     self.min_len[idx], self.max_len[idx], None if self.attention is None else self.attention[idx],
                     enc, mask, dec_state, None if lm is None else lm.take(self.lm_state, idx),
                     None if self.track is None else self.track.select(idx),
                     None if self.ctx is None else self.ctx[idx])

    @property
    def prev(self) -> np.ndarray:
        """(N,) the token each row feeds to the next step."""
        if self.history.shape[1] == 0:
            return np.full(self.utt.size, SOS_ID, dtype=np.int64)
        return self.history[:, -1]


class _Finished:
    """Finished hypotheses and guard counts per utterance."""

    def __init__(self, batch: int, options: DecodeOptions):
        self.options = options
        self.hyps: list[list[Hypothesis]] = [[] for _ in range(batch)]
        self.guards = [dict.fromkeys(GUARD_NAMES, 0) for _ in range(batch)]

    def add(self, utt: int, hyp: Hypothesis) -> None:
        if hyp.stopped_by != "eos":
            self.guards[utt][hyp.stopped_by] += 1
        self.hyps[utt].append(hyp)

    def threshold(self, utt: int) -> float:
        """The nbest-th best final score so far (-inf while fewer are finished)."""
        scores = sorted((h.score for h in self.hyps[utt]), reverse=True)
        return scores[self.options.nbest - 1] if len(scores) >= self.options.nbest else NEG_INF

    def result(self) -> list[list[Hypothesis]]:
        out = []
        for utt, hyps in enumerate(self.hyps):
            best = sorted(hyps, key=lambda h: h.score, reverse=True)[: self.options.nbest]
            for h in best:
                h.guards = dict(self.guards[utt])
            out.append(best)
        return out


def _candidates(pre: np.ndarray, options: DecodeOptions, use_ctc: bool) -> np.ndarray:
    """(N, C) candidate tokens per row: top by attention+LM score, or every token in pure CTC mode."""
    vocab = pre.shape[1]
    if options.ctc_weight >= 1.0:
        return np.broadcast_to(np.arange(1, vocab), (pre.shape[0], vocab - 1))
    k = options.beam_size
    if use_ctc:
        k = math.ceil(options.pre_beam_ratio * options.beam_size)
    return _topk(pre, k)[1]


def beam_search(model: Any, enc: Any, enc_lengths: Any, options: DecodeOptions,
                lm: Any = None, context: Any = None) -> list[list[Hypothesis]]:
    """Batched joint CTC/attention beam search with optional LM shallow fusion.

    model: a backend (:mod:`asr.backends`: torch or onnxruntime) or an ``asr.model.LAS``; enc: (B, T', D)
    encoder output in the backend's array type; enc_lengths: (B,). ``lm``: a backend LM or an
    ``asr.lm.LSTMLM``. ``ctc_weight == 1`` is pure CTC prefix beam search (the attention decoder is not
    run). ``context`` (an :class:`asr.context.ContextGraph`) adds hotword bonuses before the pre-beam, so a
    boosted piece can enter the beam that the model alone would have left out.
    Returns, per utterance, up to ``nbest`` hypotheses, best first.
    """
    model = as_backend(model)
    options = _fit_to_model(model, options)
    ctc_lp = model.ctc_log_probs(enc) if options.ctc_weight > 0 else None
    decoder = model if options.ctc_weight < 1.0 else None
    return _BeamSearch(decoder, enc, as_array(enc_lengths, np.int64), ctc_lp, options, as_lm_backend(lm),
                       context).run()


def _fit_to_model(model: Any, options: DecodeOptions) -> DecodeOptions:
    """A model trained without a CTC head (or without a speller) decodes with the part it has."""
    if not model.has_ctc and options.ctc_weight > 0:
        return dataclasses.replace(options, ctc_weight=0.0)
    if not model.has_speller and options.ctc_weight < 1:
        return dataclasses.replace(options, ctc_weight=1.0)
    return options


def ctc_beam_search(log_probs: Any, lengths: Any, options: DecodeOptions,
                    lm: Any = None) -> list[list[Hypothesis]]:
    """Label-synchronous CTC prefix beam search over given CTC log-probs (B, T', V), lengths (B,).

    The same search as :func:`beam_search` with ``ctc_weight=1``, for callers that have log-probs only.
    """
    options = dataclasses.replace(options, ctc_weight=1.0)
    return _BeamSearch(None, None, as_array(lengths, np.int64), as_array(log_probs, np.float32), options,
                       as_lm_backend(lm)).run()


class _BeamSearch:
    """One batched search. Rows of utterances that are done are dropped, so the batch shrinks."""

    def __init__(self, decoder: Any, enc: Any, enc_lengths: np.ndarray, ctc_lp: np.ndarray | None,
                 options: DecodeOptions, lm: Any, context: Any = None):
        self.decoder, self.options, self.k = decoder, options, options.beam_size
        self.context = context
        # The EOS threshold compares attention scores; without the speller there are none to compare.
        self.eos_rules = options if decoder is not None else dataclasses.replace(options, eos_threshold=0.0)
        self.lm = lm if lm is not None and options.lm_weight > 0 else None
        self.batch = enc_lengths.size
        self.vocab = ctc_lp.shape[-1] if ctc_lp is not None else None
        utt = np.repeat(np.arange(self.batch), self.k)  # row -> utterance
        n = utt.size
        min_len, max_len = length_limits(enc_lengths[utt], options)
        score = np.full((self.batch, self.k), NEG_INF, dtype=np.float64)
        score[:, 0] = 0.0  # one live row per utterance until the first expansion
        zeros = np.zeros(n, dtype=np.float64)
        self.rows = _Rows(utt, score.ravel(), zeros, zeros.copy(), np.zeros((n, 0), dtype=np.int64),
                          min_len, max_len)
        if decoder is not None:
            self.rows.enc = decoder.take(enc, utt)
            lens = enc_lengths[utt]
            self.rows.mask = decoder.enc_mask(self.rows.enc, lens)
            self.rows.dec_state = decoder.init_state(self.rows.enc, lens)
            self.rows.track = _AttentionTrack.start(n)
        if self.lm is not None:
            self.rows.lm_state = self.lm.init_state(n)
        if context is not None:
            self.rows.ctx = context.init_state(n)
        self.scorer = CTCPrefixScorer(ctc_lp, enc_lengths, utt) if ctc_lp is not None else None
        self.finished = _Finished(self.batch, options)

    def run(self) -> list[list[Hypothesis]]:
        step = 0
        while self.rows.utt.size > 0:
            self._step(step)
            self._drop_done()
            step += 1
        return self.finished.result()

    def _scores(self, step: int):
        """Run the decoder and LM one step: (pre (N, V), att_logp, lm_logp, attention (N, T'), peak (N,))."""
        rows, lam = self.rows, self.options.ctc_weight
        att_logp = lm_logp = attention = peak = None
        if self.decoder is not None:
            att_logp, rows.dec_state, attention = self.decoder.step(rows.prev, rows.dec_state, rows.enc, rows.mask)
            peak = attention.argmax(axis=1)
            self.vocab = att_logp.shape[1]
        if self.lm is not None:
            lm_logp, rows.lm_state = self.lm.step(rows.prev, rows.lm_state)
        base = att_logp if att_logp is not None else np.zeros((rows.utt.size, self.vocab), np.float32)
        pre = (1.0 - lam) * base if att_logp is not None else np.zeros_like(base)
        if lm_logp is not None:
            pre = pre + self.options.lm_weight * lm_logp
        if self.context is not None:
            pre = pre + self.context.scores(rows.ctx)
        pre = pre + _eos_mask(base, step, rows.min_len, rows.max_len, self.eos_rules)
        return pre, att_logp, lm_logp, attention, peak

    def _step(self, step: int) -> None:
        pre, att_logp, lm_logp, attention, peak = self._scores(step)
        rows, k, lam = self.rows, self.k, self.options.ctc_weight
        cands = _candidates(pre, self.options, self.scorer is not None)
        cand_score = rows.score[:, None] + np.take_along_axis(pre, cands, 1).astype(np.float64) + self.options.length_bonus
        psi = ctc_r = None
        if self.scorer is not None:
            psi, ctc_r = self.scorer.extend(cands)
            cand_score = cand_score + lam * (psi - self.scorer.prefix[:, None])
        dead = (rows.score == NEG_INF)[:, None] | np.isnan(cand_score)
        cand_score = np.where(dead, NEG_INF, cand_score)
        c = cands.shape[1]
        live_utts = rows.utt.size // k
        top_score, top_idx = _topk(cand_score.reshape(live_utts, k * c), k)
        src = (np.arange(live_utts)[:, None] * k + top_idx // c).ravel()
        col = (top_idx % c).ravel()
        tokens = cands[src, col]
        new = rows.select(src, self.decoder, self.lm)
        new.score = top_score.ravel()
        if att_logp is not None:
            new.att = new.att + att_logp[src, tokens].astype(np.float64)
            if self.options.keep_attention:
                a = attention[src][:, None, :]
                new.attention = a if new.attention is None else np.concatenate([new.attention, a], 1)
        if lm_logp is not None:
            new.lm = new.lm + lm_logp[src, tokens].astype(np.float64)
        new.history = np.concatenate([new.history, tokens[:, None]], axis=1)
        if self.context is not None:
            new.ctx = self.context.advance(new.ctx, tokens)
        if self.scorer is not None:
            self.scorer.select(src, col, psi, ctc_r, tokens)
        cut, names = _guard_cut(new.history, new.track, None if peak is None else peak[src], self.options)
        self.rows = new
        self._collect(tokens, cut, names, step)

    def _collect(self, tokens: np.ndarray, cut: np.ndarray, names: list[str | None], step: int) -> None:
        """Move rows that emitted EOS or tripped a guard into the finished lists; mark them dead."""
        rows, options = self.rows, self.options
        for i, kept, stopped in _stopped_rows(rows.history, tokens, cut, names, rows.score > NEG_INF, step,
                                              rows.max_len):
            raw = float(rows.score[i])
            self.finished.add(int(rows.utt[i]), Hypothesis(
                kept, final_score(raw, len(kept) + 1, options), log_prob=float(rows.att[i]),
                ctc_score=0.0 if self.scorer is None else float(self.scorer.prefix[i]), lm_score=float(rows.lm[i]),
                stopped_by=stopped, attention=None if rows.attention is None else rows.attention[i]))
            rows.score[i] = NEG_INF

    def _drop_done(self) -> None:
        """Drop the rows of utterances that cannot improve any more (see :func:`_utterances_done`)."""
        k = self.k
        score = self.rows.score.reshape(-1, k)
        utts = self.rows.utt[::k].tolist()
        done = _utterances_done(score, [self.finished.threshold(u) for u in utts],
                                [len(self.finished.hyps[u]) for u in utts], self.options,
                                monotone=self.context is None)
        if not done.any():
            return
        keep = np.flatnonzero(np.repeat(~done, k))
        self.rows = self.rows.select(keep, self.decoder, self.lm, compact=True)
        if self.scorer is not None:
            self.scorer.keep(keep)


def _utterances_done(score: np.ndarray, thresholds: list[float], num_finished: list[int],
                     options: DecodeOptions, monotone: bool = True) -> np.ndarray:
    """(B,) bool per utterance (score: (B, beam) raw row scores): no live row is left, or none can
    still beat the nbest-th finished hypothesis.

    The bound is exact when raw scores never increase (every term is a log-probability and the length
    bonus is <= 0) and scores are not length-normalised; otherwise (and with hotword bonuses, which
    raise scores: ``monotone=False``) stop once beam_size are finished.
    """
    best_live = score.max(axis=1)
    if monotone and options.length_penalty == 0 and options.length_bonus <= 0:
        return best_live <= np.array(thresholds, dtype=best_live.dtype)
    return (best_live == NEG_INF) | (np.array(num_finished) >= options.beam_size)
