"""A small LSTM language model over the ASR tokenizer's pieces, for shallow fusion in beam search.

The LM reads ``SOS t1 ... tn`` and predicts ``t1 ... tn EOS``, with the same special ids as the speller,
so its log-probabilities add directly to the beam's scores. Its model folder mirrors the ASR one:
``model.pt`` (+ ``.sha256``) holding ``{"model": state_dict, "config": {"lm": {...}}}``, ``config.yaml``
and ``tokenizer.model``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from torch import Tensor, nn

from asr.config import from_dict, to_dict
from asr.errors import CheckpointError, ConfigError, DataError
from asr.io_utils import atomic_write_text
from asr.tokenizer import EOS_ID, IGNORE_ID, SOS_ID, Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """LM sizes and training settings (YAML / ``-o`` section ``lm``)."""

    vocab_size: int = 0  # 0 = take it from the tokenizer
    embed_dim: int = 128
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.1
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.002
    grad_clip: float = 1.0
    max_tokens: int = 256  # longer lines are cut (the LM only needs local context for fusion)
    seed: int = 0

    def __post_init__(self):
        if self.vocab_size != 0 and self.vocab_size <= 3:
            raise ValueError("vocab_size must be > 3")
        if min(self.embed_dim, self.hidden, self.layers, self.epochs, self.batch_size, self.max_tokens) < 1:
            raise ValueError("embed_dim, hidden, layers, epochs, batch_size and max_tokens must be >= 1")
        if not 0.0 <= self.dropout < 1.0 or self.lr <= 0 or self.grad_clip < 0:
            raise ValueError("need 0 <= dropout < 1, lr > 0, grad_clip >= 0")


class LMState(NamedTuple):
    """LSTM state, batch first so beam search can reorder it: h, c each (N, layers, hidden)."""

    h: Tensor
    c: Tensor


class LSTMLM(nn.Module):
    """Embedding, LSTM, linear output over the tokenizer's vocabulary."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        if cfg.vocab_size <= 3:
            raise ValueError("LMConfig.vocab_size must be set from the tokenizer")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden, cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.hidden, cfg.vocab_size)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> LMState:
        """Zero state for ``batch`` rows."""
        device = device or self.output.weight.device
        zeros = torch.zeros(batch, self.cfg.layers, self.cfg.hidden, device=device)
        return LMState(zeros, zeros.clone())

    def forward(self, inputs: Tensor, state: LMState | None = None) -> tuple[Tensor, LMState]:
        """Teacher-forced pass. inputs: (B, U) token ids -> (logits (B, U, V), final state)."""
        hc = None if state is None else (state.h.transpose(0, 1).contiguous(), state.c.transpose(0, 1).contiguous())
        out, (h, c) = self.lstm(self.dropout(self.embed(inputs)), hc)
        return self.output(self.dropout(out)), LMState(h.transpose(0, 1), c.transpose(0, 1))

    def step(self, tokens: Tensor, state: LMState) -> tuple[Tensor, LMState]:
        """One step for beam search. tokens: (N,) previous tokens -> (log_probs (N, V), new state)."""
        tokens = tokens.to(self.output.weight.device)
        logits, state = self(tokens[:, None], state)
        return torch.log_softmax(logits[:, 0], dim=-1), state

    @torch.no_grad()
    def score_tokens(self, seqs: Sequence[Sequence[int]]) -> list[float]:
        """Total log-probability of each token sequence, including its closing EOS."""
        was_training = self.training
        self.eval()
        inputs, targets = _pad_batch(seqs, self.output.weight.device)
        logp = torch.log_softmax(self(inputs)[0], dim=-1)
        picked = logp.gather(2, targets.clamp(min=0)[..., None])[..., 0]
        out = picked.masked_fill(targets == IGNORE_ID, 0.0).sum(1)
        self.train(was_training)
        return out.tolist()

    def score_text(self, text: str, tokenizer: Tokenizer) -> float:
        """Log-probability (natural log) of ``text`` under the LM, EOS included."""
        return self.score_tokens([tokenizer.encode(text)])[0]


def _pad_batch(seqs: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Inputs ``SOS + seq`` padded with EOS and targets ``seq + EOS`` padded with IGNORE_ID, (B, U+1)."""
    width = max(len(s) for s in seqs) + 1
    inputs = torch.full((len(seqs), width), EOS_ID, dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        inputs[i, 0] = SOS_ID
        inputs[i, 1 : len(s) + 1] = torch.as_tensor(list(s), dtype=torch.long)
        targets[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        targets[i, len(s)] = EOS_ID
    return inputs.to(device), targets.to(device)


@torch.no_grad()
def perplexity(lm: LSTMLM, seqs: Sequence[Sequence[int]], batch_size: int = 64) -> float:
    """exp(mean negative log-likelihood per predicted token, EOS included)."""
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        total += sum(lm.score_tokens(chunk))
        count += sum(len(s) + 1 for s in chunk)
    return math.exp(-total / max(count, 1))


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def read_texts(paths: Sequence[str | Path]) -> list[str]:
    """Sentences from manifests (``*.jsonl``: their ``text``) or plain text files (one per line)."""
    from asr.data.manifest import read_manifest

    texts: list[str] = []
    for path in map(Path, paths):
        if path.suffix == ".jsonl":
            texts += [u.text for u in read_manifest(path)]
            continue
        try:
            texts += path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(path, "text file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(path, f"cannot read text ({e.__class__.__name__})") from None
    return [t.strip() for t in texts if t.strip()]


def encode_texts(texts: Sequence[str], tokenizer: Tokenizer, max_tokens: int) -> list[list[int]]:
    """Tokenise non-empty lines, cut to ``max_tokens``."""
    return [tokenizer.encode(t)[:max_tokens] for t in texts if t.strip()]


def _train_epoch(lm: LSTMLM, opt: torch.optim.Optimizer, seqs: list[list[int]], cfg: LMConfig,
                 rng: random.Random) -> float:
    """One pass over shuffled, length-bucketed batches; returns the mean training loss per token."""
    lm.train()
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), rng.random()))
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    rng.shuffle(batches)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_ID, reduction="sum")
    total, count = 0.0, 0
    for batch in batches:
        inputs, targets = _pad_batch([seqs[i] for i in batch])
        logits, _ = lm(inputs)
        n_tokens = int((targets != IGNORE_ID).sum())
        loss = loss_fn(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        opt.zero_grad()
        (loss / n_tokens).backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(lm.parameters(), cfg.grad_clip)
        opt.step()
        total += loss.item()
        count += n_tokens
    return total / max(count, 1)


def train_lm(train_texts: Sequence[str], tokenizer: Tokenizer, out_dir: str | Path, cfg: LMConfig,
             valid_texts: Sequence[str] | None = None) -> dict:
    """Train an LSTM LM and write its model folder (the weights with the best validation perplexity).

    Without ``valid_texts`` the training text doubles as validation text. Returns a summary dict with
    ``train_perplexity``, ``valid_perplexity``, ``epochs`` and ``seconds``.
    """
    cfg = dataclasses.replace(cfg, vocab_size=tokenizer.vocab_size)
    train = encode_texts(train_texts, tokenizer, cfg.max_tokens)
    if not train:
        raise DataError("train-lm", "no non-empty training text")
    valid = encode_texts(valid_texts, tokenizer, cfg.max_tokens) if valid_texts else train
    if not valid:
        raise DataError("train-lm", "no non-empty validation text")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    lm = LSTMLM(cfg)
    opt = torch.optim.Adam(lm.parameters(), lr=cfg.lr)
    best, best_state = float("inf"), None
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        loss = _train_epoch(lm, opt, train, cfg, rng)
        lm.eval()
        ppl = perplexity(lm, valid)
        log.info("lm epoch %d: train loss %.3f, valid perplexity %.2f", epoch, loss, ppl)
        if ppl < best:
            best = ppl
            best_state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    lm.load_state_dict(best_state)
    lm.eval()
    save_lm(out_dir, lm, tokenizer)
    summary = {"train_perplexity": perplexity(lm, train), "valid_perplexity": best, "epochs": cfg.epochs,
               "seconds": round(time.perf_counter() - start, 2), "train_lines": len(train),
               "valid_lines": len(valid)}
    atomic_write_text(Path(out_dir) / "train_summary.yaml", yaml.safe_dump(summary, sort_keys=False))
    return summary


def save_lm(folder: str | Path, lm: LSTMLM, tokenizer: Tokenizer) -> Path:
    """Write an LM model folder: model.pt (+ .sha256), config.yaml, tokenizer.model."""
    from asr.checkpoint import cpu_state_dict, save_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.copy_to(folder)
    sections = {"lm": to_dict(lm.cfg)}
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(sections, sort_keys=False))
    save_checkpoint(folder / "model.pt", {"model": cpu_state_dict(lm), "config": sections})
    return folder


def load_lm(model_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[LSTMLM, Tokenizer]:
    """Rebuild ``(LSTMLM, Tokenizer)`` from an LM folder; the LM is in eval mode.

    Raises CheckpointError for a missing folder, corrupt weights or a config that does not fit them.
    """
    from asr.checkpoint import read_model_dir

    model_dir = Path(model_dir)
    path, obj, sections = read_model_dir(model_dir, "LM", map_location)
    if not isinstance(sections.get("lm"), dict):
        raise CheckpointError(path, "not an LM checkpoint (no 'lm' config section)")
    try:
        cfg = from_dict(LMConfig, sections["lm"], f"{path} [lm]")
    except ConfigError as e:
        raise CheckpointError(path, f"stored LM config is invalid ({e.reason})") from None
    tokenizer = Tokenizer.load(model_dir / "tokenizer.model")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(model_dir, f"tokenizer has {tokenizer.vocab_size} pieces, the LM {cfg.vocab_size}")
    lm = LSTMLM(cfg)
    try:
        lm.load_state_dict(obj["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(path, f"weights do not fit the stored LM config ({str(e).splitlines()[0]})") from None
    lm.to(map_location)
    lm.eval()
    return lm, tokenizer


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """True when two tokenizers map every id to the same piece (so an LM fits an ASR model)."""
    return a.vocab_size == b.vocab_size and all(a.id_to_piece(i) == b.id_to_piece(i) for i in range(a.vocab_size))


def load_fusion_lm(lm_dir: str | Path, tokenizer: Tokenizer, map_location: str | torch.device = "cpu") -> LSTMLM:
    """Load an LM folder for shallow fusion with an ASR model that uses ``tokenizer``.

    Raises ConfigError when the LM was trained over other pieces (its scores would be of other tokens).
    """
    from asr.errors import ConfigError

    lm, lm_tok = load_lm(lm_dir, map_location=map_location)
    if not same_vocabulary(lm_tok, tokenizer):
        raise ConfigError(str(lm_dir), "the LM's tokenizer differs from the ASR model's tokenizer")
    return lm
