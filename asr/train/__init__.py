"""Training, split by concern; :func:`train` is the entry point.

=================  ======================================================================
``loop``           :func:`train` (set-up) and :func:`fit`, the loop read top to bottom
``step``           forward/backward of a micro-batch (OOM split), the optimizer step, AMP
``validate``       dev loss, accuracy, greedy WER with :mod:`asr.scoring`'s normalisation
``checkpoints``    training checkpoints with rotation, resume, best-N weights
``metrics``        metrics.csv, TensorBoard, PNG plots
``data``           manifests, filtering, datasets, sampler, CMVN, the model
``distributed``    torchrun set-up and the collectives the loop uses
``schedule``       the learning-rate schedule (:func:`get_lr`)
``rng``            seeding and RNG state for exact resume
``config``         :class:`TrainConfig`, the YAML section ``train``
=================  ======================================================================

Exact resume: model, optimizer, step, epoch, the sampler's position inside the epoch and every RNG
state are checkpointed, so ``resume=True`` continues with the same batches, dropout and SpecAugment
masks as an uninterrupted run. DDP: ``torchrun --nproc-per-node N -m asr train ...``; the loss is
weighted so the update equals one process on the union of the ranks' batches; only rank 0 writes.
"""

from asr.train.config import TrainConfig
from asr.train.distributed import Dist, setup_distributed
from asr.train.loop import Run, fit, train
from asr.train.schedule import get_lr
from asr.train.state import TrainResult, TrainState

__all__ = ["Dist", "Run", "TrainConfig", "TrainResult", "TrainState", "fit", "get_lr", "setup_distributed",
           "train"]
