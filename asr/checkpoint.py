"""Checkpoints: atomic, checksummed, weights-only-loadable files, and self-contained model folders.

Every checkpoint file ``X.pt`` has a sibling ``X.pt.sha256`` holding the SHA-256 of its bytes. Both are
written atomically (temporary file, fsync, rename), the data first. A reader verifies the checksum before
unpickling, and unpickles with ``torch.load(weights_only=True)``, so a checkpoint may hold only tensors,
dicts, lists, tuples, numbers, strings and None. A file killed mid-write is therefore either absent, or
present without a matching checksum (and then refused), never silently half-read.

Layout of an experiment folder written by :func:`asr.train.train`::

    exp/config.yaml                 resolved experiment config
    exp/tokenizer.model             copy of the tokenizer
    exp/cmvn.json                   global CMVN statistics used by the model
    exp/train.log, metrics.csv      log and per-step/per-validation metrics; tensorboard/, plots/*.png
    exp/filtered.tsv                training utterances left out (too long/short, too few frames for CTC)
    exp/failures.tsv                utterances skipped because their audio could not be read
    exp/checkpoints/ckpt-<step>.pt  full training state (model, optimizer, sampler position, RNG states)
    exp/best/model-<step>.pt        weights of the best-N validations, ranked in exp/best/best.json
    exp/final/                      model folder with the last weights

Averaging is done once, by ``asr average`` (:func:`average_model`), which writes a model folder from
the best ``train.average_n`` validations (or the newest training checkpoints).

A model folder holds ``model.pt`` (``{"model": state_dict, "config": {section: {key: scalar}}}``),
``model.pt.sha256``, ``config.yaml`` and ``tokenizer.model``; :func:`load_las` rebuilds from it alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from asr.errors import CheckpointError
from asr.io_utils import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"
CKPT_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")


def checksum_path(path: str | Path) -> Path:
    """Return the path of the checksum file beside ``path``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def save_checkpoint(path: str | Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` with ``torch.save`` atomically, then its SHA-256 beside it (also atomically).

    ``obj`` must be weights-only-loadable: tensors, dicts, lists, tuples, numbers, strings, None.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, data)
    atomic_write_text(checksum_path(path), f"{digest}  {path.name}\n")


def _read_verified(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(path, "checkpoint not found") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a folder, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot read checkpoint ({e.strerror or e})") from None
    try:
        expected = checksum_path(path).read_text(encoding="utf-8").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        raise CheckpointError(path, f"checksum file {checksum_path(path).name} is missing or unreadable") from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(path, "checksum mismatch (file is corrupt or was modified)")
    return data


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Verifies the checksum, then unpickles with ``weights_only=True``. Raises CheckpointError when the
    file or its checksum is missing, the checksum does not match, the bytes are corrupt, or the file
    needs arbitrary unpickling (code execution).
    """
    path = Path(path)
    data = _read_verified(path)
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported object"
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(
                path, "refusing to unpickle an object that is not plain weights (possible code execution)"
            ) from None
        raise CheckpointError(path, f"corrupt checkpoint ({first})") from None
    except Exception as e:  # torch raises RuntimeError/EOFError/zip errors for damaged archives
        raise CheckpointError(path, f"corrupt checkpoint ({e.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"expected a dict, found {type(obj).__name__}")
    return obj


def checkpoint_step(path: str | Path) -> int | None:
    """Return the step number of a ``ckpt-<step>.pt`` name, or None."""
    m = CKPT_PATTERN.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Return the ``ckpt-<step>.pt`` files of ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def is_intact(path: str | Path) -> bool:
    """True when ``path`` exists and matches its checksum (the bytes are not unpickled)."""
    try:
        _read_verified(Path(path))
    except CheckpointError:
        return False
    return True


def newest_intact_checkpoint(folder: str | Path) -> Path | None:
    """Return the ``ckpt-<step>.pt`` with the highest step that loads cleanly, or None.

    Corrupt or unverifiable checkpoints are skipped with a warning (a kill during a save leaves one).
    """
    for path in reversed(list_checkpoints(folder)):
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping unusable checkpoint: %s", e)
            continue
        return path
    return None


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """Average the model weights of several checkpoints (model folders' model.pt or training ckpts).

    Floating-point tensors are averaged in float64 and cast back; integer buffers (counters) are
    taken from the last checkpoint. Raises CheckpointError if the parameter names or shapes differ.
    """
    if not paths:
        raise CheckpointError("average", "no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for path in paths:
        state = _model_state(load_checkpoint(path), path)
        if total and set(state) != set(total):
            raise CheckpointError(path, "parameter names differ from the other checkpoints")
        for name, tensor in state.items():
            if name in total and tensor.shape != total[name].shape:
                raise CheckpointError(path, f"shape of '{name}' differs from the other checkpoints")
            if tensor.is_floating_point():
                total[name] = total.get(name, 0) + tensor.to(torch.float64)
            else:
                total[name] = tensor
        last = state
    n = len(paths)
    return {
        name: (total[name] / n).to(last[name].dtype) if last[name].is_floating_point() else last[name]
        for name in last
    }


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint file and its checksum (either may be missing)."""
    Path(path).unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def average_model(exp_dir: str | Path, n: int | None, mode: str, out_dir: str | Path) -> Path:
    """Write a model folder at ``out_dir`` averaging ``n`` checkpoints of the experiment ``exp_dir``.

    ``n=None`` takes ``train.average_n`` of ``exp_dir/config.yaml``. ``mode="best"``: the ``n`` best
    validations by dev loss (``exp/best``); ``mode="last"``: the ``n`` newest training checkpoints
    (``exp/checkpoints``). Raises CheckpointError when there are none.
    """
    from asr.config import ExperimentConfig, load_experiment_config
    from asr.errors import ConfigError
    from asr.tokenizer import Tokenizer

    exp_dir = Path(exp_dir)
    if mode == "best":
        try:
            best = json.loads((exp_dir / "best" / "best.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CheckpointError(exp_dir / "best" / "best.json", "no best-checkpoint list (train first)") from None
    elif mode != "last":
        raise ConfigError("--mode", f"must be best or last, got {mode!r}")
    if n is None:
        n = load_experiment_config(exp_dir / "config.yaml").train.average_n
    if mode == "best":
        paths = [exp_dir / "best" / e["path"] for e in sorted(best, key=lambda e: (e["loss"], e["wer"]))[:n]]
    else:
        paths = list_checkpoints(exp_dir / "checkpoints")[-n:]
    if not paths:
        raise CheckpointError(exp_dir, f"no checkpoints to average for mode '{mode}'")
    if len(paths) < n:
        log.warning("only %d checkpoints available; averaging those", len(paths))
    sections = load_checkpoint(paths[-1])["config"]
    exp_config = ExperimentConfig.from_sections(sections, where=str(paths[-1]))
    state = average_checkpoints(paths)
    tokenizer = Tokenizer.load(exp_dir / "tokenizer.model")
    log.info("averaged %d checkpoints: %s", len(paths), ", ".join(p.name for p in paths))
    return save_model_dir(out_dir, state, exp_config, tokenizer, exp_dir)


def _model_state(obj: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    state = obj.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(path, "checkpoint has no 'model' state dict")
    return state


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Return the plain module inside a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return a detached CPU copy of the model's state dict (DDP wrapper removed)."""
    return {k: v.detach().to("cpu").clone() for k, v in unwrap_model(model).state_dict().items()}


def save_model_dir(folder: str | Path, model: torch.nn.Module | dict, exp_config, tokenizer,
                   exp_dir: str | Path | None = None) -> Path:
    """Write a self-contained model folder: model.pt (+ .sha256), config.yaml, tokenizer.model, README.md.

    ``model`` is a module or a state dict; ``exp_config`` an :class:`asr.config.ExperimentConfig` whose
    ``model.vocab_size`` matches ``tokenizer.vocab_size``. ``exp_dir``: the experiment whose training
    data the model card describes (:mod:`asr.model_card`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = model if isinstance(model, dict) else cpu_state_dict(model)
    tokenizer.copy_to(folder)
    atomic_write_text(folder / "config.yaml", exp_config.to_yaml())
    save_checkpoint(folder / "model.pt", {"model": state, "config": exp_config.to_sections()})
    from asr.model_card import write_model_card

    write_model_card(folder, exp_config, tokenizer, state, exp_dir)
    return folder


def read_model_dir(model_dir: Path, what: str, map_location: str | torch.device = "cpu"):
    """Load ``<model_dir>/model.pt`` of a model folder: ``(path, checkpoint dict, config sections dict)``.

    ``what`` names the folder in errors ("model", "LM"). Raises CheckpointError for a missing folder,
    a corrupt file or a checkpoint without config sections.
    """
    if not model_dir.is_dir():
        raise CheckpointError(model_dir, f"{what} folder not found")
    path = model_dir / "model.pt"
    obj = load_checkpoint(path, map_location=map_location)
    sections = obj.get("config")
    if not isinstance(sections, dict):
        raise CheckpointError(path, "checkpoint has no 'config' sections")
    return path, obj, sections


def load_las(model_dir: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild ``(LAS, Tokenizer, ExperimentConfig)`` from a model folder; the model is in eval mode.

    Raises CheckpointError (missing folder, corrupt weights, config/weights mismatch) or
    TokenizerError (bad tokenizer.model).
    """
    from asr.config import ExperimentConfig
    from asr.errors import ConfigError
    from asr.model import LAS
    from asr.tokenizer import Tokenizer

    model_dir = Path(model_dir)
    path, obj, sections = read_model_dir(model_dir, "model", map_location)
    try:
        exp_config = ExperimentConfig.from_sections(sections, where=str(path))
    except ConfigError as e:
        raise CheckpointError(path, f"stored config is invalid ({e.reason})") from None
    tokenizer = Tokenizer.load(model_dir / "tokenizer.model")
    if exp_config.model.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            model_dir,
            f"tokenizer has {tokenizer.vocab_size} pieces but the model was trained with "
            f"{exp_config.model.vocab_size}",
        )
    model = build_las(exp_config)
    try:
        model.load_state_dict(_model_state(obj, path))
    except RuntimeError as e:
        raise CheckpointError(path, f"weights do not fit the stored config ({str(e).splitlines()[0]})") from None
    model.to(map_location)
    model.eval()
    assert isinstance(model, LAS)
    return model, tokenizer, exp_config


def build_las(exp_config):
    """Construct an untrained LAS from an experiment config (its model and specaug sections)."""
    from asr.model import LAS

    return LAS(exp_config.model, exp_config.specaug)
