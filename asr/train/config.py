"""Training settings: :class:`TrainConfig` (YAML section ``train``), the one home of their defaults."""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("noam", "cosine", "constant")
AMP_MODES = ("none", "auto", "bf16", "fp16")
SOURCES = ("audio", "cached")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (YAML section ``train``)."""

    seed: int = 0
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    warmup_steps: int = 500
    lr_schedule: str = "noam"  # decay after warm-up: noam (1/sqrt(step)), cosine (to min_lr), constant
    min_lr: float = 1e-5
    max_epochs: int = 30
    max_steps: int = 0  # optimizer updates; 0 = no limit (max_epochs decides)
    max_duration: float = 60.0  # seconds of audio per batch (per rank, before accumulation)
    num_buckets: int = 10
    grad_clip: float = 5.0  # max global gradient norm; 0 = no clipping
    accum_grad: int = 1
    # none | bf16 (CUDA, or a CPU with avx512_bf16/amx_bf16; elsewhere one warning, fp32) | fp16 (CUDA)
    # | auto (bf16 where it runs natively, else fp32)
    amp: str = "none"
    weight_decay: float = 0.0
    adam_beta2: float = 0.98
    valid_every_steps: int = 0  # also validate every K updates; 0 = at epoch ends only
    valid_every_epochs: int = 1  # 0 = never at epoch ends (then valid_every_steps decides)
    target_wer: float = -1.0  # stop once the dev greedy WER is <= this; negative = never
    checkpoint_every_steps: int = 500  # 0 = only at epoch ends
    keep_checkpoints: int = 3
    keep_best: int = 5
    average_n: int = 5  # checkpoints `asr average` averages into the final model folder (1 = none)
    dev_wer_utts: int = 100  # dev utterances decoded greedily for the WER
    max_utt_seconds: float = 20.0
    min_utt_seconds: float = 0.1
    max_nonfinite: int = 10  # stop after this many non-finite steps in a row
    num_workers: int = 2
    num_threads: int = 0  # torch intra-op threads; 0 = torch's default
    feature_source: str = "audio"  # audio (on the fly) | cached (asr features shards)
    deterministic: bool = False
    log_every: int = 25
    plots: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        checks = [
            (self.lr > 0, "lr must be > 0"),
            (self.min_lr >= 0, "min_lr must be >= 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {', '.join(SCHEDULES)}"),
            (self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}"),
            (self.feature_source in SOURCES, f"feature_source must be one of {', '.join(SOURCES)}"),
            (self.max_epochs >= 1, "max_epochs must be >= 1"),
            (self.max_steps >= 0, "max_steps must be >= 0"),
            (self.max_duration > 0, "max_duration must be > 0"),
            (self.num_buckets >= 1, "num_buckets must be >= 1"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.accum_grad >= 1, "accum_grad must be >= 1"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 < self.adam_beta2 < 1, "adam_beta2 must be in (0, 1)"),
            (self.valid_every_steps >= 0, "valid_every_steps must be >= 0"),
            (self.valid_every_epochs >= 0, "valid_every_epochs must be >= 0"),
            (self.checkpoint_every_steps >= 0, "checkpoint_every_steps must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.keep_best >= 1, "keep_best must be >= 1"),
            (self.average_n >= 1, "average_n must be >= 1"),
            (self.dev_wer_utts >= 0, "dev_wer_utts must be >= 0"),
            (self.max_utt_seconds > 0, "max_utt_seconds must be > 0"),
            (self.max_nonfinite >= 1, "max_nonfinite must be >= 1"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.num_threads >= 0, "num_threads must be >= 0"),
            (self.log_every >= 1, "log_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
