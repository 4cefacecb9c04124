"""Config loading: frozen dataclasses hold the defaults; YAML holds scalar overrides per section.

A YAML file looks like::

    model:
      listener_hidden: 256
    train:
      lr: 0.001

Each top-level key names a section (one dataclass), and each section holds scalars only. An unknown
section, an unknown key or a value of the wrong type is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.errors import ConfigError

if TYPE_CHECKING:  # the section modules import this one
    from asr.augment import AugmentConfig
    from asr.features import FeatureConfig
    from asr.model import ModelConfig
    from asr.specaugment import SpecAugmentConfig
    from asr.train.config import TrainConfig

Scalar = int | float | str | bool | None

# Section name -> (module, class). Imported lazily so that each module can import this one.
SECTIONS: dict[str, tuple[str, str]] = {
    "features": ("asr.features", "FeatureConfig"),
    "specaug": ("asr.specaugment", "SpecAugmentConfig"),
    "model": ("asr.model", "ModelConfig"),
    "train": ("asr.train.config", "TrainConfig"),
    "augment": ("asr.augment", "AugmentConfig"),
}


def section_class(name: str) -> type:
    """Return the dataclass of config section ``name``."""
    module, cls = SECTIONS[name]
    return getattr(importlib.import_module(module), cls)


def load_yaml_sections(path: str | Path) -> dict[str, dict[str, Scalar]]:
    """Read a YAML config of ``section: {key: scalar}`` mappings.

    Raises ConfigError on a missing file, bad YAML, or a non-scalar value.
    """
    import yaml  # on first use: an exported model runs (and takes flags) without pyyaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"cannot read config ({e.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise ConfigError(path, f"invalid YAML: {first}") from None
    except RecursionError:
        raise ConfigError(path, "invalid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "top level must be a mapping of sections")
    out: dict[str, dict[str, Scalar]] = {}
    for section, values in data.items():
        if not isinstance(section, str):
            raise ConfigError(path, f"section name {section!r} is not a string")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(path, f"section '{section}' must be a mapping of scalars")
        for key, value in values.items():
            if not isinstance(key, str):
                raise ConfigError(path, f"key {key!r} in section '{section}' is not a string")
            if not isinstance(value, (int, float, str, bool)) and value is not None:
                raise ConfigError(path, f"'{section}.{key}' must be a scalar, got {type(value).__name__}")
        out[section] = dict(values)
    return out


def _coerce(value: Any, annotation: Any, where: str, key: str) -> Any:
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" as a string; accept it as a float.
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(where, f"'{key}' must be {name}, got {value!r}")


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build the frozen dataclass ``cls`` from ``values``, checking keys and types.

    Raises ConfigError for an unknown key, a wrong type, or a value the dataclass rejects.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(where, f"unknown key '{key}' (known keys: {known})")
        kwargs[key] = _coerce(value, hints[key], where, key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(where, str(e)) from None


def to_dict(obj: Any) -> dict[str, Scalar]:
    """Return the fields of a config dataclass as a plain dict of scalars."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def replace(obj: Any, where: str = "override", **changes: Any) -> Any:
    """``dataclasses.replace`` with the same key and type checks as :func:`from_dict`."""
    return from_dict(type(obj), {**to_dict(obj), **changes}, where)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """All sections of an experiment: features, specaug, model, train and augment."""

    features: FeatureConfig
    specaug: SpecAugmentConfig
    model: ModelConfig
    train: TrainConfig
    augment: AugmentConfig = None  # type: ignore[assignment]  # None (an older config): the defaults, all off

    def __post_init__(self) -> None:
        if self.augment is None:
            object.__setattr__(self, "augment", section_class("augment")())

    @classmethod
    def default(cls) -> ExperimentConfig:
        return cls(**{name: section_class(name)() for name in SECTIONS})

    @classmethod
    def from_sections(cls, sections: dict[str, dict[str, Scalar]], where: str = "config") -> ExperimentConfig:
        """Build from ``{section: {key: value}}``; missing sections and keys take defaults."""
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise ConfigError(where, f"unknown section '{sorted(unknown)[0]}' (known: {', '.join(SECTIONS)})")
        sections = _moved_keys(sections, where)
        parts = {}
        for name in SECTIONS:
            parts[name] = from_dict(section_class(name), sections.get(name, {}), f"{where} [{name}]")
        return cls(**parts)

    def to_sections(self) -> dict[str, dict[str, Scalar]]:
        return {name: to_dict(getattr(self, name)) for name in SECTIONS}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_sections(), sort_keys=False)


def _moved_keys(sections: dict[str, dict[str, Scalar]], where: str) -> dict[str, dict[str, Scalar]]:
    """Read configs and checkpoints written before a key moved: ``model.specaug_policy`` is now
    ``specaug.policy`` (one setting decides SpecAugment). Both given and different is an error."""
    model = sections.get("model")
    if not isinstance(model, dict) or "specaug_policy" not in model:
        return sections
    sections = {k: dict(v) if isinstance(v, dict) else v for k, v in sections.items()}
    policy = sections["model"].pop("specaug_policy")
    specaug = sections.setdefault("specaug", {})
    if not isinstance(specaug, dict):
        return sections
    if "policy" in specaug and specaug["policy"] != policy:
        raise ConfigError(f"{where} [model]", f"specaug_policy {policy!r} contradicts specaug.policy "
                          f"{specaug['policy']!r}; give only specaug.policy")
    specaug["policy"] = policy
    return sections


def load_experiment_config(
    path: str | Path | None, overrides: dict[str, dict[str, Scalar]] | None = None
) -> ExperimentConfig:
    """Load an experiment config from YAML (or defaults when ``path`` is None), then apply overrides."""
    sections = load_yaml_sections(path) if path is not None else {}
    for name, values in (overrides or {}).items():
        sections.setdefault(name, {}).update(values)
    return ExperimentConfig.from_sections(sections, str(path) if path else "config")


def parse_override(text: str) -> tuple[str, str, Scalar]:
    """Parse a CLI override ``section.key=value`` (value parsed as a YAML scalar)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(text, "override must look like section.key=value, e.g. train.lr=0.001")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.split(".", 1)
    import yaml

    try:
        value = yaml.safe_load(rhs) if rhs else ""
    except yaml.YAMLError:
        value = rhs
    if not isinstance(value, (int, float, str, bool)) and value is not None:
        raise ConfigError(text, "override value must be a scalar")
    return section, key, value
