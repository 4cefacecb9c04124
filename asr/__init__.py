"""Listen-Attend-Spell speech recognition.

    >>> import asr
    >>> from asr.transcribe import transcribe
    >>> rec = asr.load_model("recipes/mini/exp/default/final")
    >>> segments = transcribe(rec, "speech.wav")
    >>> nbest = rec.decode_batch(waves, lengths, asr.DecodeOptions(nbest=3))

Names are imported on first use (module ``__getattr__``), so ``import asr`` does not load torch. No
name exported here is also the name of a submodule, so ``asr.transcribe`` is always the module.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asr.config import ExperimentConfig
    from asr.decoding import DecodeOptions, Hypothesis
    from asr.features import FeatureConfig
    from asr.inference import Recognizer
    from asr.model import ModelConfig
    from asr.transcribe import Segment, TranscribeConfig, VadConfig

__version__ = "0.1.0"

_LAZY = {
    "Recognizer": "asr.inference",
    "Segment": "asr.transcribe",
    "DecodeOptions": "asr.decoding",
    "Hypothesis": "asr.decoding",
    "TranscribeConfig": "asr.transcribe",
    "VadConfig": "asr.transcribe",
    "ExperimentConfig": "asr.config",
    "FeatureConfig": "asr.features",
    "ModelConfig": "asr.model",
}

__all__ = [
    "DecodeOptions",
    "ExperimentConfig",
    "FeatureConfig",
    "Hypothesis",
    "ModelConfig",
    "Recognizer",
    "Segment",
    "TranscribeConfig",
    "VadConfig",
    "__version__",
    "load_model",
]


def load_model(model_dir: str | Path, device: str = "cpu", backend: str = "auto") -> Recognizer:
    """Load a model folder as a :class:`asr.inference.Recognizer` (``Recognizer.from_dir``).

    An `asr export` folder (export.json) runs on onnxruntime without torch; ``backend`` "torch" or
    "onnx" insists on one.
    """
    from asr.inference import Recognizer

    return Recognizer.from_dir(model_dir, device, backend)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'asr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
