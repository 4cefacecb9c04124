"""Map-style dataset of utterances, batch collation and the DataLoader factory.

Item ``i`` of :class:`AsrDataset` is a dict ``feats`` float32 ``(frames, n_mels)`` (log-mel, no CMVN: the
model applies it), ``tokens`` (list of ids, no sos/eos), ``id``, ``text``, ``speaker``. Features come from
the audio (``source="audio"``: load, resample, log-mel on the fly) or from the shards written by
``asr features`` (``source="cached"``: each utterance's ``"feats"`` entry ``"<shard.npy>:<start>:<frames>"``
names its rows, read through a memory map). Both sources run the same :func:`utterance_features`, so
they give the same numbers.

Bad items do not kill training. If an utterance's audio or feature rows cannot be read inside a
worker, the dataset logs a warning and returns ``{"id": ..., "error": reason}`` instead of the item;
:func:`collate` drops such items and lists them in :attr:`Batch.failed` so the trainer can log the ids
(and skip a batch whose items all failed: ``len(batch) == 0``). Errors that concern the whole dataset
(a missing ``feats`` entry, a shard of the wrong width, a feature config that differs from the one the
shards were computed with) are raised at construction as :class:`asr.errors.DataError`.

Training augmentation (:mod:`asr.augment`) happens here, per item: a dataset given an
:class:`asr.augment.Augmenter` is indexed by ``(epoch, index)`` keys, which :func:`make_loader` makes
from the batch sampler's epoch, and seeds each item's draws from them. Plain integer indices (validation,
decoding, a dataset without an augmenter) give the features untouched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from asr.data.manifest import Utterance, source_duration, speed_of
from asr.errors import AsrError, DataError
from asr.tokenizer import IGNORE_ID, Tokenizer

log = logging.getLogger(__name__)

FEATURE_CONFIG_NAME = "feature_config.json"  # written beside the shards by asr.data.featstage


# -- features of one utterance ------------------------------------------------------------------


def utterance_wave(utt: Utterance, cfg) -> np.ndarray:
    """``utt``'s audio segment at ``cfg.sample_rate`` with its speed factor applied: (samples,) float32."""
    from asr.audio import change_speed, load_audio

    duration = source_duration(utt) if utt.duration > 0 else None
    return change_speed(load_audio(utt.audio, sample_rate=cfg.sample_rate, offset=utt.offset, duration=duration),
                        speed_of(utt))


def utterance_features(utt: Utterance, cfg, logmel=None, wave: np.ndarray | None = None) -> torch.Tensor:
    """Load ``utt``'s audio segment and return its log-mel features ``(frames, n_mels)`` float32.

    ``logmel`` is an ``asr.features.LogMel(cfg)`` to reuse (building one per call re-creates its
    filterbank). ``wave`` replaces the audio on disk (an augmented copy). Raises AudioError on
    unreadable audio.
    """
    from asr.features import LogMel

    if wave is None:
        wave = utterance_wave(utt, cfg)
    if logmel is None:
        logmel = LogMel(cfg)
    samples = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]
    # One utterance's FFTs are too small to split across threads: extra threads only spin, and
    # steal the cores from training when this runs in the trainer's process (num_workers=0).
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            feats, lengths = logmel(samples, torch.tensor([samples.shape[1]]))
    finally:
        if threads > 1:
            torch.set_num_threads(threads)
    return feats[0, : int(lengths[0])].contiguous()


def parse_feats_spec(spec: str) -> tuple[str, int, int]:
    """Split a manifest ``"feats"`` value ``"<path>:<start>:<frames>"`` (the path may hold ``:``)."""
    path, start, frames = spec.rsplit(":", 2)
    return path, int(start), int(frames)


def _check_shards(utts: Sequence[Utterance], cfg) -> list[tuple[str, int, int]]:
    """Parse every utterance's feats entry and check each shard once: exists, width, feature config."""
    specs = []
    checked: dict[str, int] = {}
    for u in utts:
        spec = u.extra.get("feats")
        if not isinstance(spec, str):
            raise DataError(u.id, "no 'feats' entry for source='cached' (run `asr features` first)")
        try:
            path, start, frames = parse_feats_spec(spec)
        except ValueError:
            raise DataError(u.id, f"malformed feats entry {spec!r} (expected path:start:frames)") from None
        if path not in checked:
            checked[path] = _shard_rows(path, cfg)
        if start < 0 or frames < 0 or start + frames > checked[path]:
            raise DataError(u.id, f"feats rows {start}:{start + frames} outside shard {path}")
        specs.append((path, start, frames))
    return specs


def _shard_rows(path: str, cfg) -> int:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot open feature shard ({e.__class__.__name__})") from None
    if arr.ndim != 2 or arr.shape[1] != cfg.n_mels or arr.dtype != np.float32:
        raise DataError(path, f"shard is {arr.dtype} {arr.shape}, expected float32 (rows, {cfg.n_mels})")
    saved = Path(path).parent / FEATURE_CONFIG_NAME
    if saved.exists():
        from asr.config import to_dict

        stored = json.loads(saved.read_text(encoding="utf-8"))
        if stored != to_dict(cfg):
            diff = sorted(k for k in set(stored) | set(to_dict(cfg)) if stored.get(k) != to_dict(cfg).get(k))
            raise DataError(path, f"shards were computed with other feature settings ({', '.join(diff)})")
    return int(arr.shape[0])


# -- dataset --------------------------------------------------------------------------------------


class AsrDataset(Dataset):
    """Utterances as ``{"feats": (frames, n_mels) float32, "tokens", "id", "text", "speaker"}``.

    Parameters
    ----------
    utts: the utterances (e.g. from :func:`asr.data.manifest.read_manifest`).
    tokenizer: encodes each text once here; None gives empty token lists (e.g. for decoding).
    feature_cfg: an ``asr.features.FeatureConfig``.
    source: ``"audio"`` (on-the-fly log-mel) or ``"cached"`` (rows of ``asr features`` shards).
    augment: an :class:`asr.augment.Augmenter`, applied to items fetched by ``(epoch, index)`` keys.
    speaker_cmn: return features minus their speaker's mean log-mel (``ModelConfig.speaker_cmn``), the
        means taken here over this set's own utterances, once; an utterance with no speaker uses its own.
    """

    def __init__(self, utts: list[Utterance], tokenizer: Tokenizer | None, feature_cfg, source: str = "audio",
                 augment=None, speaker_cmn: bool = False):
        if source not in ("audio", "cached"):
            raise DataError("source", f"must be 'audio' or 'cached', got {source!r}")
        self.utts = list(utts)
        self.feature_cfg = feature_cfg
        self.source = source
        # Encoding up front keeps the tokenizer (not picklable) out of the worker processes.
        self.tokens = [tokenizer.encode(u.text) if tokenizer is not None else [] for u in self.utts]
        self._specs = _check_shards(self.utts, feature_cfg) if source == "cached" else None
        self._logmel = None
        self._shards: dict[str, np.ndarray] = {}
        self.augment = augment if augment is not None and augment.cfg.enabled else None
        self._warped: dict[float, Any] = {}  # VTLP factor -> LogMel with the warped filterbank
        self.speaker_means: dict[str, torch.Tensor] = {}
        self._utt_means: torch.Tensor | None = None
        if speaker_cmn:
            self._utt_means, self.speaker_means = self._compute_speaker_means()

    def _compute_speaker_means(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Each utterance's mean log-mel (N, n_mels), and each speaker's, weighted by frames."""
        n_mels = self.feature_cfg.n_mels
        utt_means = torch.zeros(len(self.utts), n_mels)
        sums: dict[str, torch.Tensor] = {}
        frames: dict[str, int] = {}
        for i, u in enumerate(self.utts):
            try:
                f = self.features(i)
            except (AsrError, OSError, ValueError):
                continue  # __getitem__ reports and skips it
            if len(f) == 0:
                continue
            utt_means[i] = f.mean(dim=0)
            if u.speaker:
                sums[u.speaker] = sums.get(u.speaker, torch.zeros(n_mels, dtype=torch.float64)) + f.double().sum(0)
                frames[u.speaker] = frames.get(u.speaker, 0) + len(f)
        log.info("speaker CMN: means of %d speakers over %d utterances", len(sums), len(self.utts))
        return utt_means, {s: (sums[s] / frames[s]).float() for s in sums}

    def _speaker_normalised(self, i: int, feats: torch.Tensor, augmented: bool) -> torch.Tensor:
        mean = self.speaker_means.get(self.utts[i].speaker)
        if mean is None:
            return feats - feats.mean(dim=0) if len(feats) else feats
        if augmented and len(feats):
            # As if the speaker's mean had been taken under this utterance's augmentation: a VTLP warp or
            # added noise moves the mean, and at test time the speaker's own mean would include that move.
            mean = mean + (feats.mean(dim=0) - self._utt_means[i])
        return feats - mean

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def durations(self) -> list[float]:
        """Seconds of each utterance, for :class:`asr.data.sampler.DynamicBucketSampler`."""
        return [u.duration for u in self.utts]

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps and the LogMel module are per process; workers reopen them lazily.
        state = dict(self.__dict__)
        state["_logmel"], state["_shards"], state["_warped"] = None, {}, {}
        return state

    def features(self, i: int) -> torch.Tensor:
        """Features of item ``i``: ``(frames, n_mels)`` float32. Raises AsrError/OSError on bad data."""
        if self._specs is not None:
            path, start, frames = self._specs[i]
            shard = self._shards.get(path)
            if shard is None:
                shard = self._shards[path] = np.load(path, mmap_mode="r")
            return torch.from_numpy(np.array(shard[start : start + frames], dtype=np.float32))
        if self._logmel is None:
            from asr.features import LogMel

            self._logmel = LogMel(self.feature_cfg)
        return utterance_features(self.utts[i], self.feature_cfg, self._logmel)

    def augmented_features(self, i: int, epoch: int) -> torch.Tensor:
        """Features of item ``i`` augmented as in ``epoch``: ``(frames', n_mels)`` float32."""
        from asr.augment import VTLP_STEP

        aug = self.augment
        rng = aug.rng(epoch, i)
        if self._specs is not None:
            return aug.features(self.features(i), rng, self._other_features)
        from asr.augment import change_tempo
        from asr.features import LogMel

        wave, alpha, tempo = aug.wave(utterance_wave(self.utts[i], self.feature_cfg), rng, self._other_waves)
        alpha = round(alpha / VTLP_STEP) * VTLP_STEP  # a bank of at most 2 * vtlp / step filterbanks
        logmel = self._warped.get(alpha)
        if logmel is None:
            logmel = self._warped[alpha] = LogMel(self.feature_cfg, warp=alpha)
        feats = utterance_features(self.utts[i], self.feature_cfg, logmel, wave=wave)
        return change_tempo(feats, tempo) if tempo != 1.0 else feats

    def _other_features(self, k: int, rng: np.random.Generator) -> list[torch.Tensor]:
        return [self.features(int(j)) for j in rng.integers(len(self), size=k)]

    def _other_waves(self, k: int, rng: np.random.Generator) -> list[np.ndarray]:
        return [utterance_wave(self.utts[int(j)], self.feature_cfg) for j in rng.integers(len(self), size=k)]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (None, key)
        utt = self.utts[i]
        try:
            augmented = epoch is not None and self.augment is not None
            feats = self.augmented_features(i, epoch) if augmented else self.features(i)
            if self._utt_means is not None:
                feats = self._speaker_normalised(i, feats, augmented)
        except (AsrError, OSError, ValueError) as e:
            log.warning("skipping %s: %s", utt.id, e)
            return {"id": utt.id, "error": str(e)}
        return {"feats": feats, "tokens": self.tokens[i], "id": utt.id, "text": utt.text,
                "speaker": utt.speaker}


# -- batching -------------------------------------------------------------------------------------


@dataclass
class Batch:
    """A padded batch.

    feats: ``(B, T, F)`` float32, zero-padded; feat_lengths: ``(B,)`` long.
    targets: ``(B, U)`` long padded with IGNORE_ID (no sos/eos); target_lengths: ``(B,)`` long.
    failed: ``(id, reason)`` of items dropped because they could not be loaded.
    """

    feats: torch.Tensor
    feat_lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    ids: list[str]
    texts: list[str]
    speakers: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Copy of the batch with its tensors on ``device``."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(move(self.feats), move(self.feat_lengths), move(self.targets),
                     move(self.target_lengths), self.ids, self.texts, self.speakers, self.failed)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader when ``pin_memory=True``."""
        return Batch(self.feats.pin_memory(), self.feat_lengths.pin_memory(), self.targets.pin_memory(),
                     self.target_lengths.pin_memory(), self.ids, self.texts, self.speakers, self.failed)


def collate(items: Sequence[dict[str, Any] | None]) -> Batch:
    """Pad dataset items into a :class:`Batch`; failed items (``"error"`` key or None) are dropped.

    Returns feats ``(B, T, F)``, feat_lengths ``(B,)``, targets ``(B, U)`` padded with IGNORE_ID,
    target_lengths ``(B,)``; with every item failed, B = 0 and the tensors are empty.
    """
    good = [it for it in items if it is not None and "error" not in it]
    failed = [(it["id"], it["error"]) for it in items if it is not None and "error" in it]
    n_mels = good[0]["feats"].shape[1] if good else 0
    feat_lengths = torch.tensor([it["feats"].shape[0] for it in good], dtype=torch.long)
    target_lengths = torch.tensor([len(it["tokens"]) for it in good], dtype=torch.long)
    t_max = int(feat_lengths.max()) if good else 0
    u_max = int(target_lengths.max()) if good else 0
    # Padding is built in numpy: torch would run each copy as an intra-op parallel region, and in the
    # trainer's process (num_workers=0) on busy cores those regions cost 50x the copy itself.
    feats = np.zeros((len(good), t_max, n_mels), dtype=np.float32)
    targets = np.full((len(good), u_max), IGNORE_ID, dtype=np.int64)
    for b, it in enumerate(good):
        feats[b, : it["feats"].shape[0]] = it["feats"].numpy()
        targets[b, : len(it["tokens"])] = it["tokens"]
    return Batch(torch.from_numpy(feats), feat_lengths, torch.from_numpy(targets), target_lengths,
                 [it["id"] for it in good], [it["text"] for it in good], [it["speaker"] for it in good], failed)


def _worker_init(_worker_id: int) -> None:
    # Each worker computes one item at a time; extra intra-op threads would fight the trainer for cores.
    torch.set_num_threads(1)


class EpochKeyed:
    """A batch sampler's batches as ``(epoch, index)`` keys, for a dataset that augments per epoch.

    The epoch is read from ``sampler.epoch`` when iteration starts; everything else (``set_epoch``,
    ``state_dict``, resume) stays on the wrapped sampler, which the trainer keeps driving.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = int(getattr(self.sampler, "epoch", 0))
        for batch in self.sampler:
            yield [(epoch, int(i)) for i in batch]


def make_loader(
    dataset: Dataset,
    sampler,
    num_workers: int = 0,
    prefetch_factor: int = 4,
    pin_memory: bool = False,
    persistent_workers: bool = True,
) -> DataLoader:
    """A DataLoader over ``dataset`` whose batches come from the batch sampler ``sampler``.

    Workers do the loading and log-mel; ``persistent_workers`` keeps them (and their memory maps)
    alive across epochs. The sampler is iterated in the main process, so ``sampler.set_epoch`` and
    ``sampler.load_state_dict`` work with persistent workers. ``num_workers=0`` loads in-process.
    A dataset with an augmenter gets ``(epoch, index)`` keys (:class:`EpochKeyed`).
    """
    if getattr(dataset, "augment", None) is not None:
        sampler = EpochKeyed(sampler)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = dict(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
                      worker_init_fn=_worker_init)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, **kwargs)


# -- filtering ------------------------------------------------------------------------------------


def ctc_min_frames(tokens: Sequence[int]) -> int:
    """Encoder frames CTC needs for ``tokens``: one per token plus a blank between repeated tokens."""
    repeats = sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)
    return len(tokens) + repeats


def filter_utterances(
    utts: Sequence[Utterance],
    max_seconds: float,
    tokenizer: Tokenizer | None = None,
    max_tokens: int | None = None,
    min_seconds: float = 0.0,
    feature_cfg=None,
    subsampling: int = 1,
) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Split ``utts`` into the kept ones and ``(id, reason)`` of the rejected ones.

    Rejected: longer than ``max_seconds``, shorter than ``min_seconds``, and with a tokenizer, more
    than ``max_tokens`` tokens or more tokens than CTC can align to the encoder output, whose length is
    ``max(num_frames(samples), R) // R`` with ``R = subsampling`` (frame stacking x pyramid reduction,
    as ``asr.model.output_lengths`` computes it).
    """
    from asr.features import FeatureConfig, num_frames

    cfg = feature_cfg if feature_cfg is not None else FeatureConfig()
    kept: list[Utterance] = []
    rejected: list[tuple[str, str]] = []
    for u in utts:
        reason = None
        if u.duration > max_seconds:
            reason = f"too long ({u.duration:.2f} s > {max_seconds:g} s)"
        elif u.duration < min_seconds:
            reason = f"too short ({u.duration:.2f} s < {min_seconds:g} s)"
        elif tokenizer is not None:
            tokens = tokenizer.encode(u.text)
            r = max(1, subsampling)
            enc_frames = max(num_frames(int(round(u.duration * cfg.sample_rate)), cfg), r) // r
            if max_tokens is not None and len(tokens) > max_tokens:
                reason = f"too many tokens ({len(tokens)} > {max_tokens})"
            elif ctc_min_frames(tokens) > enc_frames:
                reason = f"too few frames for CTC ({enc_frames} encoder frames < {ctc_min_frames(tokens)} needed)"
        if reason is None:
            kept.append(u)
        else:
            rejected.append((u.id, reason))
    return kept, rejected
