"""Decoding a manifest (the ``asr decode`` command): batches, parallel jobs, outputs and failures.

:func:`decode_manifest` reads a manifest, decodes it with :class:`asr.inference.Recognizer` (the search
is :func:`asr.decoding.search`), and writes ``hyps.jsonl``, a Kaldi-style ``text``, ``failures.tsv``
and ``decode.json``. A file that cannot be read, or an utterance that cannot be decoded, is listed in
``failures.tsv`` and the rest of the job goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.adapt import AdaptConfig
from asr.config import to_dict
from asr.decoding import DecodeOptions, Hypothesis
from asr.inference import Recognizer, pad_waves
from asr.io_utils import atomic_write_text
from asr.text import one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeRunConfig:
    """How to run a manifest decode: batching, parallel jobs, device and an optional LM folder."""

    batch_size: int = 16
    nj: int = 1  # processes; on CUDA one per GPU, round-robin
    device: str = "cpu"
    lm_dir: str = ""  # empty: no LM
    progress: bool = True
    backend: str = "auto"  # "auto" (onnx for an `asr export` folder, else torch) | "torch" | "onnx"
    vtln: bool = False  # per speaker, the filterbank warp the model likes best (asr.vtln)
    vtln_utts: int = 50  # utterances per speaker that choose its warp (50 beat 20 on the mini dev set)
    # Per speaker, a second pass through a feature transform fitted to the first pass (asr.adapt); None: off.
    adapt: AdaptConfig | None = None

    def __post_init__(self):
        if self.batch_size < 1 or self.nj < 1:
            raise ValueError("batch_size and nj must be >= 1")
        if self.vtln_utts < 1:
            raise ValueError("vtln_utts must be >= 1")
        if self.backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be auto, torch or onnx, got {self.backend!r}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")


@dataclass
class DecodeSummary:
    """What :func:`decode_manifest` did. ``failures``: (utterance id, reason) in manifest order."""

    num_utts: int
    num_decoded: int
    failures: list[tuple[str, str]]
    audio_seconds: float
    seconds: float

    @property
    def rtf(self) -> float:
        return self.seconds / max(self.audio_seconds, 1e-9)


def decode_manifest(model_dir: str | Path, manifest: str | Path, out_dir: str | Path, options: DecodeOptions,
                    run: DecodeRunConfig) -> DecodeSummary:
    """Decode every utterance of ``manifest`` and write ``hyps.jsonl``, ``text`` and ``failures.tsv``.

    Audio that cannot be read (or decoded) is skipped and listed in ``failures.tsv`` with the reason.
    With ``run.nj > 1`` the manifest is cut into contiguous shards decoded by separate processes; the
    outputs are merged back in manifest order. Raises AsrError subclasses for a bad model folder, LM
    folder or manifest.
    """
    from asr.data.manifest import read_manifest

    utts = read_manifest(manifest)
    start = time.perf_counter()
    per_speaker = run.vtln or run.adapt is not None or _speaker_cmn(model_dir, run)
    if run.nj == 1 or len(utts) == 1 or (per_speaker and len({u.speaker for u in utts}) == 1):
        results, failures = _decode_shard(str(model_dir), utts, options, run, run.device, 0)
    else:
        results, failures = _decode_parallel(str(model_dir), utts, options, run, per_speaker)
    warps = {r["speaker"]: r["warp"] for r in results if "warp" in r}
    seconds = time.perf_counter() - start
    by_id = {r["id"]: r for r in results}
    failed = dict(failures)
    ordered = [by_id[u.id] for u in utts if u.id in by_id]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "hyps.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    atomic_write_text(out_dir / "text", "".join(f"{r['id']} {r['text']}".rstrip() + "\n" for r in ordered))
    atomic_write_text(out_dir / "failures.tsv",
                      "".join(f"{u.id}\t{one_line(failed[u.id])}\n" for u in utts if u.id in failed))
    summary = DecodeSummary(len(utts), len(ordered), [(u.id, failed[u.id]) for u in utts if u.id in failed],
                            sum(float(r["duration"]) for r in ordered), seconds)
    run_info = {**to_dict(run), "adapt": None if run.adapt is None else to_dict(run.adapt)}
    info = {"model": str(model_dir), "manifest": str(manifest), "options": to_dict(options), "run": run_info,
            "num_utts": summary.num_utts, "num_decoded": summary.num_decoded,
            "num_failed": len(summary.failures), "audio_seconds": round(summary.audio_seconds, 3),
            "seconds": round(seconds, 3), "rtf": round(summary.rtf, 5)}
    if run.vtln:
        info["vtln_warps"] = dict(sorted(warps.items()))
    if run.adapt is not None:
        info["adapt_losses"] = dict(sorted({r["speaker"]: r["adapt_loss"] for r in results if "adapt_loss" in r}.items()))
    atomic_write_text(out_dir / "decode.json", json.dumps(info, indent=2) + "\n")
    return summary


def _speaker_cmn(model_dir: str | Path, run: DecodeRunConfig) -> bool:
    """Whether ``model_dir`` holds a torch model that normalises by speaker (``ModelConfig.speaker_cmn``)."""
    if run.backend == "onnx":
        return False  # an exported model uses each utterance's own mean
    import yaml

    # The folder's config.yaml, not model.pt: the weights are loaded once, by the shard that decodes.
    try:
        sections = yaml.safe_load((Path(model_dir) / "config.yaml").read_text(encoding="utf-8"))
        return bool(sections["model"].get("speaker_cmn"))
    except (OSError, yaml.YAMLError, TypeError, KeyError, AttributeError):
        return False  # the shard that loads the model reports a broken folder


def _decode_parallel(model_dir: str, utts: list, options: DecodeOptions, run: DecodeRunConfig,
                     per_speaker: bool) -> tuple[list[dict], list[tuple[str, str]]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if per_speaker:
        shards = _speaker_shards(utts, run.nj)
        nj = len(shards)
    else:
        nj = min(run.nj, len(utts))
        bounds = [round(i * len(utts) / nj) for i in range(nj + 1)]
        shards = [utts[bounds[i] : bounds[i + 1]] for i in range(nj)]
    devices = [run.device] * nj
    if run.device.startswith("cuda") and run.device == "cuda":
        import torch

        gpus = max(torch.cuda.device_count(), 1)
        devices = [f"cuda:{i % gpus}" for i in range(nj)]
    threads = max(1, (os.cpu_count() or 1) // nj)
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    results: list[dict] = []
    failures: list[tuple[str, str]] = []
    with ProcessPoolExecutor(max_workers=nj, mp_context=ctx) as pool:
        futures = [pool.submit(_decode_shard_worker, model_dir, shard, options, run, devices[i], i, threads)
                   for i, shard in enumerate(shards)]
        for fut in futures:
            res, fail, error = fut.result()
            if error is not None:
                raise error[0](error[1], error[2])
            results += res
            failures += fail
    return results, failures


def _by_speaker(utts: list) -> dict[str, list]:
    """``utts`` grouped by speaker, in order of first appearance."""
    groups: dict[str, list] = {}
    for u in utts:
        groups.setdefault(u.speaker, []).append(u)
    return groups


def _speaker_shards(utts: list, nj: int) -> list[list]:
    """Up to ``nj`` shards of whole speakers (each speaker's warp is chosen once), balanced by duration."""
    groups = _by_speaker(utts)
    shards: list[list] = [[] for _ in range(min(nj, len(groups)))]
    loads = [0.0] * len(shards)
    for group in sorted(groups.values(), key=lambda g: -sum(u.duration for u in g)):
        k = loads.index(min(loads))
        shards[k] += group
        loads[k] += sum(u.duration for u in group)
    return shards


def _decode_shard_worker(model_dir: str, utts: list, options: DecodeOptions, run: DecodeRunConfig, device: str,
                         position: int, threads: int):
    """Returns (results, failures, None), or ([], [], (error class, what, reason)) for a user error."""
    from asr.errors import AsrError

    try:
        return (*_decode_shard(model_dir, utts, options, run, device, position, threads), None)
    except AsrError as e:
        # AsrError subclasses take (what, reason), which default exception pickling cannot rebuild.
        return [], [], (type(e), e.what, e.reason)


def _decode_shard(model_dir: str, utts: list, options: DecodeOptions, run: DecodeRunConfig, device: str,
                  position: int, threads: int | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Decode ``utts`` in batches of similar duration; returns (result dicts, failures).

    ``threads``: CPU threads of this process (torch's, or onnxruntime's); None leaves the default.
    """
    from tqdm import tqdm

    rec = Recognizer.from_dir(model_dir, device=device, backend=run.backend, threads=threads)
    if run.adapt is not None and not hasattr(rec.backend, "set_feature_transform"):
        from asr.errors import ConfigError

        # Before any decoding: the first pass would otherwise run in full only to be thrown away.
        raise ConfigError("--adapt", "needs the torch backend (an exported model cannot be adapted)")
    lm = rec.load_lm(run.lm_dir) if run.lm_dir else None
    results: list[dict] = []
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(utts), desc=f"decode[{position}]", position=position, unit="utt",
               disable=not run.progress, leave=False)
    # With VTLN, adaptation or speaker CMN each speaker's utterances are decoded together, under the warp chosen for
    # that speaker and minus that speaker's mean.
    speaker_cmn = getattr(rec.backend, "speaker_cmn", False)
    groups = _by_speaker(utts) if run.vtln or run.adapt is not None or speaker_cmn else {"": utts}
    for speaker, group in groups.items():
        # The warp first: the speaker's mean is then taken once, under it (warp_scores takes its own per warp).
        warp = _speaker_warp(rec, speaker, group, run, failures) if run.vtln else None
        if speaker_cmn:
            _speaker_mean(rec, speaker, group)
        tags = {} if warp is None else {"speaker": speaker, "warp": warp}
        if run.adapt is not None and speaker:
            for _ in range(run.adapt.rounds):
                first = _decode_group(rec, group, options, run, lm, [])
                rec.backend.set_feature_transform(None)  # each round fits afresh, on the newest hypotheses
                tags = {**tags, "speaker": speaker, **_adapt_speaker(rec, speaker, group, first, run.adapt)}
        out = _decode_group(rec, group, options, run, lm, failures)
        if run.adapt is not None:
            rec.backend.set_feature_transform(None)
        for r in out:
            r.update(tags)
        results += out
        bar.update(len(group))
    if run.vtln:
        rec.backend.set_warp(1.0)
    if speaker_cmn:
        rec.backend.set_speaker_mean(None)
    bar.close()
    return results, failures


def _decode_group(rec: Recognizer, group: list, options: DecodeOptions, run: DecodeRunConfig, lm: Any,
                  failures: list) -> list[dict]:
    """Decode one speaker's utterances (or all, with no speaker grouping) in batches of similar duration."""
    results = []
    order = sorted(group, key=lambda u: -u.duration)  # similar lengths together: less padding
    for i in range(0, len(order), run.batch_size):
        batch = order[i : i + run.batch_size]
        waves, ok = _load_batch(batch, rec.sample_rate, failures)
        if ok:
            try:
                results += _decode_loaded(rec, ok, waves, options, lm)
            except (RuntimeError, ValueError) as e:
                # One bad item can break a whole batch (e.g. a clip too short for the model): retry alone.
                results += _decode_one_by_one(rec, ok, waves, options, lm, failures, e)
    return results


def _adapt_speaker(rec: Recognizer, speaker: str, group: list, first: list[dict], cfg: AdaptConfig) -> dict:
    """Fit ``speaker``'s feature transform to the first-pass results ``first`` and set it on the backend;
    returns tags for the speaker's results (the pseudo-label loss per utterance before and after)."""
    from asr.adapt import fit_transform, most_confident

    tokens = {r["id"]: r["tokens"] for r in most_confident([r for r in first if r["tokens"]], cfg.keep_fraction)}
    utts = [u for u in group if tokens.get(u.id)]
    waves, ok = _load_batch(utts, rec.sample_rate, [])
    if not ok:
        log.info("adapt: speaker %s has no hypotheses to adapt to", speaker)
        return {}
    feats = rec.backend.model_inputs(waves)
    unlabelled: list = []
    if cfg.entropy_weight > 0:
        rest, _ = _load_batch([u for u in group if u.id not in tokens], rec.sample_rate, [])
        unlabelled = rec.backend.model_inputs([w for w in rest if len(w)])
    result = fit_transform(rec.backend.model, feats, [tokens[u.id] for u in ok], cfg, unlabelled)
    rec.backend.set_feature_transform(result.transform)
    log.info("adapt: speaker %s, %d utterances, pseudo-label loss %.3f -> %.3f", speaker, result.num_utts,
             result.first_loss, result.last_loss)
    return {"adapt_loss": [round(result.first_loss, 4), round(result.last_loss, 4)]}


def _speaker_mean(rec: Recognizer, speaker: str, group: list) -> None:
    """Set the backend's speaker mean to the mean log-mel of all of ``group``'s readable audio (Kaldi's
    per-speaker CMN); with no speaker (or nothing readable) each utterance uses its own mean."""
    waves, _ = _load_batch(group, rec.sample_rate, []) if speaker else ([], [])
    waves = [w for w in waves if len(w)]
    rec.backend.set_speaker_mean(rec.backend.feature_mean(waves) if waves else None)
    log.info("speaker CMN: speaker %s, mean of %d utterances", speaker or "(none)", len(waves))


def _speaker_warp(rec: Recognizer, speaker: str, group: list, run: DecodeRunConfig, failures: list) -> float:
    """Choose ``speaker``'s warp (:func:`asr.vtln.choose_warp`) on a sample of ``group`` and set it."""
    from asr.vtln import choose_warp, sample_evenly

    # Unreadable files are left to the decoding loop, which lists them in failures.tsv.
    waves, _ = _load_batch(sample_evenly(group, run.vtln_utts), rec.sample_rate, [])
    warp = choose_warp(rec, waves) if waves else 1.0
    log.info("vtln: speaker %s warp %.2f (%d utterances)", speaker or "(none)", warp, len(waves))
    rec.backend.set_warp(warp)
    return warp


def _load_batch(batch: list, sample_rate: int, failures: list) -> tuple[list[np.ndarray], list]:
    from asr.audio import load_audio
    from asr.errors import AsrError

    waves, ok = [], []
    for u in batch:
        try:
            duration = u.duration if u.duration > 0 else None
            wave = load_audio(u.audio, sample_rate, u.offset, duration)
        except (AsrError, OSError, ValueError, RuntimeError) as e:
            log.warning("skipping %s: %s", u.id, e)
            failures.append((u.id, str(e)))
            continue
        waves.append(wave)
        ok.append(u)
    return waves, ok


def _decode_one_by_one(rec: Any, utts: list, waves: list, options: DecodeOptions, lm: Any, failures: list,
                       batch_error: Exception) -> list[dict]:
    log.warning("batch failed (%s); decoding its utterances one by one", one_line(str(batch_error)))
    out = []
    for u, w in zip(utts, waves):
        try:
            out += _decode_loaded(rec, [u], [w], options, lm)
        except (RuntimeError, ValueError) as e:
            failures.append((u.id, f"decoding failed: {one_line(str(e))}"))
    return out


def _decode_loaded(rec: Recognizer, utts: list, waves: list, options: DecodeOptions, lm: Any) -> list[dict]:
    """Encode and search one batch of loaded waveforms (each (samples,) float32)."""
    nbests = rec.decode_batch(*pad_waves(waves), options, lm)
    return [_result(u, len(w) / rec.sample_rate, hyps, rec.tokenizer) for u, w, hyps in zip(utts, waves, nbests)]


def _result(utt: Any, duration: float, nbest: list[Hypothesis], tokenizer: Any) -> dict:
    best = nbest[0]
    return {
        "id": utt.id, "text": tokenizer.decode(best.tokens), "tokens": best.tokens, "score": round(best.score, 4),
        "log_prob": round(best.log_prob, 4), "ctc_score": round(best.ctc_score, 4),
        "lm_score": round(best.lm_score, 4), "stopped_by": best.stopped_by, "guards": best.guards,
        "duration": round(duration, 4),
        "nbest": [{"text": tokenizer.decode(h.tokens), "tokens": h.tokens, "score": round(h.score, 4)}
                  for h in nbest],
    }
