"""Listen-Attend-Spell speech recognition.

    >>> import asr
    >>> model = asr.load_model("recipes/mini/exp/default/final")
    >>> segments = model.transcribe("speech.wav")
    >>> asr.transcribe("speech.wav", "recipes/mini/exp/default/final")  # the same in one call

Names are imported on first use (module ``__getattr__``), so ``import asr`` does not load torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asr.config import ExperimentConfig
    from asr.decoding import DecodeOptions
    from asr.features import FeatureConfig
    from asr.inference import Recognizer, Segment
    from asr.model import ModelConfig
    from asr.transcribe import TranscribeConfig, VadConfig

# The submodule asr.transcribe shares its name with the function below. Loading a submodule binds it
# as a package attribute, so load it now (it needs numpy only) and let the function win, as Whisper does.
from asr import transcribe as _transcribe_module  # noqa: E402, F401

__version__ = "0.1.0"

_LAZY = {
    "Recognizer": "asr.inference",
    "Segment": "asr.inference",
    "DecodeOptions": "asr.decoding",
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
    "ModelConfig",
    "Recognizer",
    "Segment",
    "TranscribeConfig",
    "VadConfig",
    "__version__",
    "load_model",
    "transcribe",
]


def load_model(model_dir: str | Path, device: str = "cpu") -> Recognizer:
    """Load a model folder as a :class:`asr.inference.Recognizer` (``Recognizer.from_dir``)."""
    from asr.inference import Recognizer

    return Recognizer.from_dir(model_dir, device)


def transcribe(audio: str | Path | Any, model_dir: str | Path, **kwargs: Any) -> list[Segment]:
    """Load ``model_dir`` and transcribe ``audio`` (a path or a (samples,) array); returns Segments.

    ``kwargs`` go to :meth:`asr.inference.Recognizer.transcribe` (options, config, vad, sample_rate).
    """
    return load_model(model_dir).transcribe(audio, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'asr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
