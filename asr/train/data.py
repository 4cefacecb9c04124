"""Training data and model set-up: manifests, filtering, datasets, sampler, loader, CMVN, the model."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from asr import checkpoint as ckpt
from asr.config import ExperimentConfig
from asr.errors import ConfigError
from asr.train.distributed import Dist, barrier, wrap_ddp

log = logging.getLogger(__name__)


@dataclass
class Data:
    """Everything the loop needs from the data side."""

    tokenizer: object  # asr.tokenizer.Tokenizer
    train_set: object  # asr.data.dataset.AsrDataset
    sampler: object  # asr.data.sampler.DynamicBucketSampler (this rank's share)
    loader: object  # torch DataLoader over train_set
    dev_set: object  # asr.data.dataset.AsrDataset
    filtered: list[tuple[str, str]]  # (utterance id, why it was left out)
    batches_per_epoch: int  # of epoch 0's plan, so a resumed run computes the same schedule


def build_data(exp_config: ExperimentConfig, train_manifest, valid_manifest, tokenizer, d: Dist) -> Data:
    """Read manifests, filter unusable utterances, and build the datasets, sampler and loader."""
    from asr.data.dataset import AsrDataset, filter_utterances, make_loader
    from asr.data.manifest import read_manifest
    from asr.data.sampler import DynamicBucketSampler

    cfg = exp_config.train
    utts = read_manifest(train_manifest)
    kept, rejected = filter_utterances(
        utts, cfg.max_utt_seconds, tokenizer, min_seconds=cfg.min_utt_seconds,
        feature_cfg=exp_config.features, subsampling=exp_config.model.time_reduction,
    )
    if rejected:
        log.warning("filtered %d of %d training utterances (see filtered.tsv), e.g. %s: %s",
                    len(rejected), len(utts), *rejected[0])
    if not kept:
        raise ConfigError(train_manifest, "no training utterance is left after filtering "
                          f"(max_utt_seconds={cfg.max_utt_seconds})")
    augment = None
    if exp_config.augment.enabled:
        from asr.augment import Augmenter

        augment = Augmenter(exp_config.augment, exp_config.features, seed=cfg.seed)
    train_set = AsrDataset(kept, tokenizer, exp_config.features, source=cfg.feature_source, augment=augment,
                           speaker_cmn=exp_config.model.speaker_cmn)
    sampler = DynamicBucketSampler(train_set.durations, cfg.max_duration, cfg.num_buckets, shuffle=True,
                                   seed=cfg.seed, rank=d.rank, world_size=d.world_size)
    loader = make_loader(train_set, sampler, num_workers=cfg.num_workers, pin_memory=d.device.type == "cuda")
    dev_utts = read_manifest(valid_manifest)
    dev_kept, _ = filter_utterances(dev_utts, cfg.max_utt_seconds, None, feature_cfg=exp_config.features)
    dev_set = AsrDataset(dev_kept or dev_utts, tokenizer, exp_config.features, source=cfg.feature_source,
                         speaker_cmn=exp_config.model.speaker_cmn)
    plan = DynamicBucketSampler(train_set.durations, cfg.max_duration, cfg.num_buckets, seed=cfg.seed,
                                rank=d.rank, world_size=d.world_size)
    return Data(tokenizer, train_set, sampler, loader, dev_set, rejected, len(plan))


def load_or_compute_cmvn(exp_config: ExperimentConfig, train_set, exp_dir: Path, cmvn_path,
                         d: Dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Return CMVN ``(mean (n_mels,), std (n_mels,))``: from ``cmvn_path``, ``exp/cmvn.json``, or computed.

    Only rank 0 computes; the others wait and read the file it wrote.
    """
    from asr.features import GlobalCMVN

    cached = exp_dir / "cmvn.json"
    source = Path(cmvn_path) if cmvn_path else cached
    if d.is_main and not source.exists():
        from asr.data.featstage import compute_cmvn

        log.info("computing CMVN statistics over %d utterances", len(train_set.utts))
        cmvn = compute_cmvn(train_set.utts, exp_config.features, max(1, exp_config.train.num_workers))
        cmvn.save(cached)
    if d.is_main and source != cached and not cached.exists():
        shutil.copyfile(source, cached)
    barrier(d)
    cmvn = GlobalCMVN.load(source)  # DataError names the file when it is missing or malformed
    if cmvn.n_mels != exp_config.features.n_mels:
        raise ConfigError(source, f"CMVN has {cmvn.n_mels} dims but features.n_mels is {exp_config.features.n_mels}")
    mean, std = cmvn.finalize()
    return torch.from_numpy(mean), torch.from_numpy(std)


def build_model(exp_config: ExperimentConfig, mean: torch.Tensor, std: torch.Tensor, d: Dist) -> torch.nn.Module:
    """LAS from the config with CMVN set, on ``d.device``, wrapped in DDP when distributed."""
    model = ckpt.build_las(exp_config)
    model.set_cmvn(mean, std)
    model.to(d.device)
    return wrap_ddp(model, d)
