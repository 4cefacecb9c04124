"""The feature stage: log-mel features of a manifest, computed in parallel into sharded arrays.

``asr features --manifest data/train.jsonl --out-dir feats/train`` writes into ``feats/train``:

- ``train.shard-00000.npy``, ...: float32 ``(rows, n_mels)`` arrays, the frames of up to ``shard_size``
  consecutive utterances concatenated. The output manifest is their index.
- ``cmvn.json``: global mean/std of all frames (:class:`asr.features.GlobalCMVN`), accumulated per chunk
  in float64 and merged, so it equals the statistics of the whole corpus in one pass.
- ``feature_config.json``: the FeatureConfig used; :class:`asr.data.dataset.AsrDataset` refuses shards
  computed with other settings.
- ``failures.tsv``: ``id<TAB>audio<TAB>reason`` of each utterance whose audio could not be read (skipped).
- ``train.jsonl``: the input manifest's kept entries plus ``"feats": "<abs shard path>:<start>:<frames>"``.

Use one output folder per manifest (``cmvn.json`` and ``failures.tsv`` describe the last run).

Every file is written atomically (temp file + fsync + rename), the old output manifest is removed
before anything else and the new one is written last: an interrupted run leaves no manifest, so it
never looks complete.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asr.data.dataset import FEATURE_CONFIG_NAME, utterance_features
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.errors import AsrError, DataError
from asr.features import GlobalCMVN
from asr.io_utils import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

CMVN_NAME = "cmvn.json"
FAILURES_NAME = "failures.tsv"


@dataclass(frozen=True)
class FeatStageConfig:
    """Parallelism and sharding of the feature stage."""

    nj: int = 2  # worker processes; 1 computes in-process
    shard_size: int = 500  # utterances per shard (and per unit of work)
    progress: bool = True  # tqdm progress bar on stderr

    def __post_init__(self) -> None:
        if self.nj < 1 or self.shard_size < 1:
            raise ValueError(f"nj and shard_size must be >= 1, got {self.nj} and {self.shard_size}")


@dataclass
class FeatStageResult:
    """What a feature-stage run produced."""

    manifest: Path
    num_utts: int
    num_frames: int
    audio_seconds: float
    wall_seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)


# -- workers ------------------------------------------------------------------------------------------


_logmel_cache: dict = {}  # FeatureConfig -> LogMel, per process (its filterbank is built once)


def _logmel(feature_cfg):
    """The process's LogMel for ``feature_cfg``; built in the parent before forking, so workers share it."""
    if feature_cfg not in _logmel_cache:
        from asr.features import LogMel

        _logmel_cache[feature_cfg] = LogMel(feature_cfg)
    return _logmel_cache[feature_cfg]


_progress = None  # in pool workers: a shared count of utterances done, for the parent's progress bar


def _tick() -> None:
    if _progress is not None:
        with _progress.get_lock():
            _progress.value += 1


def _init_worker(progress) -> None:
    global _progress
    torch.set_num_threads(1)  # parallelism comes from the processes
    _progress = progress


@dataclass
class _ChunkResult:
    entries: list[tuple[int, int, int]]  # (position in the manifest, start row, frames)
    failures: list[tuple[int, str]]  # (position, reason)
    stats: GlobalCMVN
    seconds: float
    shard: str | None  # absolute path of the shard written, None if nothing was written


@dataclass(frozen=True)
class _Task:
    items: list[tuple[int, Utterance]]  # (position in the manifest, utterance)
    feature_cfg: object
    shard: Path | None  # where to write the chunk's frames; None only accumulates statistics


def _compute_chunk(task: _Task) -> _ChunkResult:
    """Features of one chunk of utterances, saved as one shard; bad audio is recorded, not raised.

    The worker writes the shard itself, so only the small index crosses the process boundary.
    """
    logmel = _logmel(task.feature_cfg)
    out = _ChunkResult([], [], GlobalCMVN(task.feature_cfg.n_mels), 0.0, None)
    frames: list[np.ndarray] = []
    start = 0
    for pos, utt in task.items:
        try:
            feats = utterance_features(utt, task.feature_cfg, logmel).numpy()
        except (AsrError, OSError, ValueError) as e:
            out.failures.append((pos, str(e)))
            _tick()
            continue
        _tick()
        out.entries.append((pos, start, feats.shape[0]))
        out.stats.accumulate(feats)
        out.seconds += utt.duration
        start += feats.shape[0]
        if task.shard is not None:
            frames.append(feats)
    if frames:
        _save_shard(task.shard, frames)
        out.shard = str(task.shard)
    return out


def _run_tasks(tasks: list[_Task], nj: int, progress: bool) -> Iterator[_ChunkResult]:
    """Yield each task's result as it completes (any order), with a progress bar in utterances."""
    from tqdm import tqdm

    total = sum(len(t.items) for t in tasks)
    with tqdm(total=total, unit="utt", desc="features", disable=not progress, leave=False) as bar:
        if nj <= 1 or len(tasks) == 1:
            for r in map(_compute_chunk, tasks):
                bar.update(len(r.entries) + len(r.failures))
                yield r
            return
        # fork: workers inherit the imported modules and the LogMel built here, so they start in
        # milliseconds instead of re-importing librosa for seconds each.
        _logmel(tasks[0].feature_cfg)
        ctx = mp.get_context("fork")
        done = ctx.Value("q", 0)
        with ctx.Pool(min(nj, len(tasks)), initializer=_init_worker, initargs=(done,)) as pool:
            results = pool.imap_unordered(_compute_chunk, tasks)
            for _ in tasks:
                while True:
                    try:
                        r = results.next(timeout=0.5)
                        break
                    except mp.TimeoutError:  # a shard is still running: show its utterances so far
                        bar.update(done.value - bar.n)
                bar.update(done.value - bar.n)
                yield r


def _split(utts: Sequence[Utterance], size: int) -> list[list[tuple[int, Utterance]]]:
    indexed = list(enumerate(utts))
    return [indexed[i : i + size] for i in range(0, len(indexed), size)]


# -- public API ---------------------------------------------------------------------------------------


def compute_cmvn(utts: Sequence[Utterance], feature_cfg, nj: int = 2) -> GlobalCMVN:
    """Global CMVN statistics of ``utts``' log-mel features, computed in ``nj`` processes.

    Unreadable utterances are skipped with a warning. Raises DataError if none can be read.
    """
    size = max(1, min(500, -(-len(utts) // max(1, 4 * nj))))  # ~4 chunks per worker balances the load
    tasks = [_Task(items, feature_cfg, None) for items in _split(utts, size)]
    stats = GlobalCMVN(feature_cfg.n_mels)
    for r in _run_tasks(tasks, nj, progress=False):
        stats.merge(r.stats)
        for pos, reason in r.failures:
            log.warning("cmvn: skipping %s: %s", utts[pos].id, reason)
    if stats.count == 0:
        raise DataError("cmvn", f"none of the {len(utts)} utterances could be read")
    return stats


def shard_name(stem: str, index: int) -> str:
    return f"{stem}.shard-{index:05d}.npy"


def _save_shard(path: Path, feats: list[np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object keeps np.save from appending ".npy" to the temporary name.
        np.save(f, np.concatenate(feats).astype(np.float32, copy=False))


def _clear_old_outputs(out_dir: Path, stem: str) -> None:
    """Remove the previous run's manifest first, so a crash from here on leaves no manifest at all."""
    (out_dir / f"{stem}.jsonl").unlink(missing_ok=True)
    # Temporary shards of a killed run (atomic_path names them ".<name>.<random>.tmp") go too.
    for old in [*out_dir.glob(f"{stem}.shard-*.npy"), *out_dir.glob(f".{stem}.shard-*.tmp")]:
        old.unlink(missing_ok=True)


def run_feature_stage(manifest: str | Path, out_dir: str | Path, feature_cfg,
                      cfg: FeatStageConfig = FeatStageConfig()) -> FeatStageResult:
    """Compute the features of ``manifest`` into ``out_dir`` (layout in the module docstring).

    Returns a :class:`FeatStageResult` whose ``failures`` lists ``(id, reason)`` of skipped utterances.
    Raises ManifestError for a bad manifest and DataError if no utterance could be read.
    """
    from asr.config import to_dict

    started = time.perf_counter()
    manifest, out_dir = Path(manifest), Path(out_dir)
    utts = read_manifest(manifest)
    out_manifest = out_dir / f"{manifest.stem}.jsonl"
    if out_manifest.resolve() == manifest.resolve():
        raise DataError(out_dir, "output folder holds the input manifest; choose another --out-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_old_outputs(out_dir, manifest.stem)
    shard_dir = out_dir.resolve()
    tasks = [_Task(items, feature_cfg, shard_dir / shard_name(manifest.stem, i))
             for i, items in enumerate(_split(utts, cfg.shard_size))]

    specs: dict[int, str] = {}
    failures: dict[int, str] = {}
    stats = GlobalCMVN(feature_cfg.n_mels)
    seconds = 0.0
    for r in _run_tasks(tasks, cfg.nj, cfg.progress):
        failures.update(r.failures)
        specs.update((pos, f"{r.shard}:{start}:{n}") for pos, start, n in r.entries)
        stats.merge(r.stats)
        seconds += r.seconds

    failed = [(utts[p], failures[p]) for p in sorted(failures)]
    _write_failures(out_dir / FAILURES_NAME, failed)
    if not specs:
        raise DataError(manifest, f"no utterance could be read ({len(failed)} failed; see {out_dir / FAILURES_NAME})")
    stats.save(out_dir / CMVN_NAME)
    atomic_write_text(out_dir / FEATURE_CONFIG_NAME, json.dumps(to_dict(feature_cfg), indent=1) + "\n")
    kept = [_with_feats(utts[p], specs[p]) for p in sorted(specs)]
    write_manifest(out_manifest, kept)  # last: its presence marks a complete run
    return FeatStageResult(out_manifest, len(kept), stats.count, seconds, time.perf_counter() - started,
                           [(u.id, reason) for u, reason in failed])


def _with_feats(utt: Utterance, spec: str) -> Utterance:
    return Utterance(utt.id, utt.audio, utt.duration, utt.text, utt.speaker, utt.offset,
                     {**utt.extra, "feats": spec})


def _write_failures(path: Path, failed: list[tuple[Utterance, str]]) -> None:
    def clean(s: str) -> str:
        return s.replace("\t", " ").replace("\n", " ")

    lines = ["id\taudio\treason\n"] + [f"{clean(u.id)}\t{clean(u.audio)}\t{clean(r)}\n" for u, r in failed]
    atomic_write_text(path, "".join(lines))
