"""Manifests: one JSON object per line, one utterance per object.

Keys: ``id``, ``audio`` (path; a relative path is resolved against the manifest's folder),
``offset`` (seconds, default 0), ``duration`` (seconds), ``text`` and ``speaker``. Any other key is kept
in :attr:`Utterance.extra` and written back unchanged (the feature stage adds ``feats``; speed
perturbation adds ``speed``, see :func:`speed_perturbed`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr.errors import ManifestError
from asr.io_utils import atomic_write_text

REQUIRED = ("id", "audio", "duration")
KNOWN = ("id", "audio", "offset", "duration", "text", "speaker")


@dataclass(frozen=True)
class Utterance:
    """One entry of a manifest."""

    id: str
    audio: str
    duration: float
    text: str = ""
    speaker: str = ""
    offset: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        d = {"id": self.id, "audio": self.audio, "offset": self.offset, "duration": self.duration,
             "text": self.text, "speaker": self.speaker}
        d.update(self.extra)
        return d


def parse_entry(obj: Any, path: str | Path, line: int, base: Path | None = None) -> Utterance:
    """Turn one decoded JSON object into an :class:`Utterance`, checking keys and types."""
    if not isinstance(obj, dict):
        raise ManifestError(path, "entry is not a JSON object", line)
    for key in REQUIRED:
        if key not in obj:
            raise ManifestError(path, f"missing key '{key}'", line)
    uid, audio = obj["id"], obj["audio"]
    if not isinstance(uid, str) or not uid:
        raise ManifestError(path, "'id' must be a non-empty string", line)
    if not isinstance(audio, str) or not audio:
        raise ManifestError(path, "'audio' must be a non-empty string", line)
    try:
        duration = float(obj["duration"])
        offset = float(obj.get("offset", 0.0) or 0.0)
    except (TypeError, ValueError, OverflowError):
        raise ManifestError(path, "'duration' and 'offset' must be numbers", line) from None
    if not (duration >= 0.0) or not (offset >= 0.0) or duration == float("inf"):
        raise ManifestError(path, "'duration' and 'offset' must be finite and non-negative", line)
    text, speaker = obj.get("text", ""), obj.get("speaker", "")
    if not isinstance(text, str) or not isinstance(speaker, str):
        raise ManifestError(path, "'text' and 'speaker' must be strings", line)
    if base is not None and not Path(audio).is_absolute():
        audio = str(base / audio)
    extra = {k: v for k, v in obj.items() if k not in KNOWN}
    return Utterance(uid, audio, duration, text, speaker, offset, extra)


def iter_manifest_bytes(path: str | Path):
    """Yield ``(line_number, raw_line_bytes)`` of a manifest's non-blank lines; ManifestError if unreadable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(path, "manifest not found") from None
    except OSError as e:
        raise ManifestError(path, f"cannot read manifest ({e.strerror or e})") from None
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
            yield i, line


def iter_manifest_lines(path: str | Path):
    """Yield ``(line_number, raw_line_text)`` of a manifest, raising ManifestError on bad bytes."""
    for i, line in iter_manifest_bytes(path):
        try:
            yield i, line.decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError(path, "line is not valid UTF-8", i) from None


def read_manifest(path: str | Path, allow_empty: bool = False) -> list[Utterance]:
    """Read a manifest; raise ManifestError naming the file and line of the first bad entry."""
    path = Path(path)
    base = path.resolve().parent
    utts: list[Utterance] = []
    seen: set[str] = set()
    for i, text in iter_manifest_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(path, f"invalid JSON ({e.msg})", i) from None
        except (ValueError, RecursionError):
            # Integers beyond Python's digit limit, or nesting beyond the recursion limit.
            raise ManifestError(path, "invalid JSON (number too large or nesting too deep)", i) from None
        utt = parse_entry(obj, path, i, base)
        if utt.id in seen:
            raise ManifestError(path, f"duplicate id '{utt.id}'", i)
        seen.add(utt.id)
        utts.append(utt)
    if not utts and not allow_empty:
        raise ManifestError(path, "manifest is empty")
    return utts


def speed_of(utt: Utterance) -> float:
    """The entry's speed-perturbation factor (``extra["speed"]``; 1.0 when absent)."""
    return float(utt.extra.get("speed", 1.0))


def source_duration(utt: Utterance) -> float:
    """Seconds of the audio file that the entry covers: ``duration`` is after speed perturbation."""
    return utt.duration * speed_of(utt)


def speed_perturbed(utts: Iterable[Utterance], factors: Iterable[float]) -> list[Utterance]:
    """Each utterance once per speed factor, Kaldi-style (Ko et al., 2015).

    A factor ``f`` other than 1 gives a copy with id and speaker prefixed ``sp<f>-`` (a perturbed
    speaker counts as a new one), ``duration / f`` and ``extra["speed"] = f``; the features are computed
    from the audio resampled so that it plays ``f`` times faster, pitch and formants shifted with it.
    """
    factors = list(factors)
    if not factors or any(not 0.5 <= f <= 2.0 for f in factors) or len(set(factors)) != len(factors):
        raise ValueError(f"speed factors must be distinct and in [0.5, 2], got {factors}")
    out = []
    for utt in utts:
        if speed_of(utt) != 1.0:
            raise ValueError(f"{utt.id} is already speed-perturbed")
        for f in factors:
            if f == 1.0:
                out.append(utt)
                continue
            tag = f"sp{f:g}-"
            out.append(Utterance(tag + utt.id, utt.audio, round(utt.duration / f, 4), utt.text,
                                 tag + utt.speaker if utt.speaker else "", utt.offset, {**utt.extra, "speed": f}))
    return out


def write_manifest(path: str | Path, utts: Iterable[Utterance]) -> None:
    """Write utterances as JSON lines, atomically."""
    lines = [json.dumps(u.to_json(), ensure_ascii=False) for u in utts]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
