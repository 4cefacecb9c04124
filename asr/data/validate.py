"""Manifest validation: split a manifest into valid entries and rejects, each reject with its reason.

Checks, per line: valid UTF-8, valid JSON, a well-formed entry (:func:`asr.data.manifest.parse_entry`),
a unique id, non-empty text, text within the alphabet (the tokenizer's, or LibriSpeech's ``[A-Z' ]``),
audio present and readable, and a duration that agrees with the audio header: a whole-file entry
must match it within the tolerance; an entry of a file that some entry cuts at an offset (Kaldi
segments) only has to end within it. One bad line never stops the rest; nothing is dropped
silently: every rejected line is counted and listed. Audio headers are read in threads.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from asr.data.importers import header_durations, tsv_field
from asr.data.manifest import (
    Utterance,
    iter_manifest_bytes,
    parse_entry,
    source_duration,
    write_manifest,
)
from asr.errors import ManifestError
from asr.io_utils import atomic_write_text

LIBRISPEECH_ALPHABET = frozenset(string.ascii_uppercase + "' ")


@dataclass(frozen=True)
class ValidateConfig:
    """What to validate and where to write the results ("" = do not write)."""

    manifest: str
    tokenizer: str = ""  # sentencepiece model whose alphabet the text must use
    out: str = ""  # valid entries
    rejects: str = ""  # line<TAB>id<TAB>kind<TAB>reason
    duration_tolerance: float = 0.1  # seconds between the manifest and the audio header
    check_audio: bool = True

    def __post_init__(self):
        if not self.duration_tolerance >= 0:
            raise ValueError("duration_tolerance must be >= 0")


@dataclass(frozen=True)
class Reject:
    """One rejected manifest line."""

    line: int
    id: str  # "" when the line has no readable id
    kind: str  # bad-utf8, bad-json, bad-entry, duplicate-id, empty-text, bad-chars,
    #            missing-audio, unreadable-audio, duration-mismatch
    reason: str


@dataclass
class ValidationReport:
    """Counts of a validation run; ``rejects`` in line order."""

    manifest: str
    lines: int = 0
    valid: list[Utterance] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        """Rejects per kind."""
        return Counter(r.kind for r in self.rejects)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.counts.items()))
        return (f"{self.manifest}: {self.lines} entries, {len(self.valid)} valid, {len(self.rejects)} rejected"
                + (f" ({kinds})" if kinds else ""))


def _parse_lines(path: Path, report: ValidationReport) -> list[tuple[int, Utterance]]:
    """Entries that parse, with their line numbers; the rest become rejects."""
    base = path.resolve().parent
    entries: list[tuple[int, Utterance]] = []
    seen: set[str] = set()
    for i, raw in iter_manifest_bytes(path):
        report.lines += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            report.rejects.append(Reject(i, "", "bad-utf8", "line is not valid UTF-8"))
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            report.rejects.append(Reject(i, "", "bad-json", f"invalid JSON ({getattr(e, 'msg', str(e))[:80]})"))
            continue
        try:
            utt = parse_entry(obj, path, i, base)
        except ManifestError as e:
            report.rejects.append(Reject(i, _id_of(obj), "bad-entry", e.reason))
            continue
        except (TypeError, ValueError, OverflowError) as e:  # e.g. a 400-digit duration
            report.rejects.append(Reject(i, _id_of(obj), "bad-entry", f"bad value ({e.__class__.__name__})"))
            continue
        if utt.id in seen:
            report.rejects.append(Reject(i, utt.id, "duplicate-id", f"duplicate id '{utt.id}'"))
            continue
        seen.add(utt.id)
        entries.append((i, utt))
    return entries


def _id_of(obj) -> str:
    uid = obj.get("id") if isinstance(obj, dict) else None
    return uid if isinstance(uid, str) else ""


def _text_problem(utt: Utterance, alphabet: frozenset[str]) -> tuple[str, str] | None:
    if not utt.text.strip():
        return "empty-text", "empty text"
    bad = sorted(set(utt.text) - alphabet)
    if bad:
        shown = " ".join(repr(c) for c in bad[:10])
        return "bad-chars", f"characters outside the alphabet: {shown}"
    return None


def _audio_problem(utt: Utterance, header: float | str, segment: bool, tol: float) -> tuple[str, str] | None:
    if isinstance(header, str):
        if not Path(utt.audio).exists():
            return "missing-audio", f"audio not found: {utt.audio}"
        return "unreadable-audio", f"unreadable audio {utt.audio}: {header}"
    # A speed-perturbed entry's duration is after perturbation; the file holds duration * speed.
    duration = source_duration(utt)
    end = utt.offset + duration
    if end > header + tol:
        return "duration-mismatch", f"offset+duration {end:.3f} s exceeds the audio's {header:.3f} s"
    # A whole-file entry must match the header; a segment only has to fit.
    if not segment and abs(header - duration) > tol:
        return "duration-mismatch", f"duration {duration:.3f} s but the audio header says {header:.3f} s"
    return None


def alphabet_of(tokenizer_path: str) -> frozenset[str]:
    """The tokenizer's alphabet, or LibriSpeech's ``[A-Z' ]`` when ``tokenizer_path`` is ""."""
    if not tokenizer_path:
        return LIBRISPEECH_ALPHABET
    from asr.tokenizer import Tokenizer

    return frozenset(Tokenizer.load(tokenizer_path).alphabet())


def validate_manifest(cfg: ValidateConfig) -> ValidationReport:
    """Validate ``cfg.manifest``; write valid entries to ``cfg.out`` and rejects to ``cfg.rejects``.

    Never raises for a bad entry; raises ManifestError only when the manifest itself cannot be read
    (and TokenizerError for a bad tokenizer).
    """
    path = Path(cfg.manifest)
    alphabet = alphabet_of(cfg.tokenizer)
    report = ValidationReport(str(path))
    entries = _parse_lines(path, report)
    # A file that any entry cuts at an offset holds segments; its offset-0 entry is a segment too.
    segmented = {u.audio for _, u in entries if u.offset > 0}
    headers = header_durations({u.audio for _, u in entries}) if cfg.check_audio else {}
    for i, utt in entries:
        problem = _text_problem(utt, alphabet)
        if problem is None and cfg.check_audio:
            problem = _audio_problem(utt, headers[utt.audio], utt.audio in segmented, cfg.duration_tolerance)
        if problem is None:
            report.valid.append(utt)
        else:
            report.rejects.append(Reject(i, utt.id, *problem))
    report.rejects.sort(key=lambda r: r.line)
    if cfg.out:
        write_manifest(cfg.out, report.valid)
    if cfg.rejects:
        atomic_write_text(cfg.rejects, "".join(f"{r.line}\t{tsv_field(r.id)}\t{r.kind}\t{tsv_field(r.reason)}\n"
                                                for r in report.rejects))
    return report
