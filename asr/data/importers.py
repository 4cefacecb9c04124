"""Importers from common corpus layouts to manifests, and an exporter to Kaldi data directories.

Every importer returns an :class:`ImportResult`: the utterances it could read, and a list of
``(item, reason)`` for the ones it skipped (audio missing or unreadable, no transcript, ...), so a
batch import never drops anything silently. Transcripts are normalised with
:func:`asr.text.normalize_librispeech` unless ``normalize=False``. Audio paths are written absolute
and durations come from audio headers (no samples are decoded).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from asr.audio import audio_duration
from asr.data.manifest import Utterance
from asr.errors import AsrError, DataError
from asr.io_utils import atomic_write_text
from asr.text import normalize_librispeech, number_to_words

AUDIO_SUFFIXES = (".flac", ".wav")
FSDD_NAME_RE = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")
FSDD_TEST_TAKES = range(0, 5)  # the dataset's official split: takes 0-4 test, 5-49 train
# Validation takes, held out of training for every speaker and digit so dev is as balanced as test.
FSDD_DEV_TAKES = range(45, 50)
FSDD_SPLITS = ("train", "dev", "test", "all")
HEADER_THREADS = 8  # header reads wait on the disk, not the CPU


@dataclass
class ImportResult:
    """Utterances read, and ``(item, reason)`` for every item skipped."""

    utterances: list[Utterance] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def header_durations(paths: Iterable[str | Path]) -> dict[str, float | str]:
    """Durations from audio headers, read in threads: ``{path: seconds}`` or ``{path: error reason}``."""
    unique = sorted({str(p) for p in paths})

    def one(path: str) -> float | str:
        try:
            return audio_duration(path)
        except AsrError as e:
            return e.reason
        except (OSError, ValueError) as e:  # ValueError: a path with a NUL byte
            return f"cannot read audio ({getattr(e, 'strerror', None) or e})"

    if len(unique) < 32:
        return {p: one(p) for p in unique}
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        return dict(zip(unique, pool.map(one, unique)))


def _text(text: str, normalize: bool) -> str:
    return normalize_librispeech(text) if normalize else " ".join(text.split())


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None


def _two_columns(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, key, rest)`` of a Kaldi-style ``key value...`` file; blank lines skipped."""
    out = []
    for i, line in enumerate(_read_lines(path), start=1):
        parts = line.strip().split(maxsplit=1)
        if parts:
            out.append((i, parts[0], parts[1] if len(parts) > 1 else ""))
    return out


def _with_durations(pending: list[tuple[str, str, str, str]], result: ImportResult) -> ImportResult:
    """Turn ``(id, audio, text, speaker)`` into utterances whose duration is the whole file."""
    durations = header_durations(p for _, p, _, _ in pending)
    for uid, audio, text, speaker in pending:
        d = durations[audio]
        if not text:
            result.failures.append((uid, "transcript is empty after normalisation"))
        elif isinstance(d, str):
            result.failures.append((uid, d))
        else:
            result.utterances.append(Utterance(uid, audio, d, text, speaker))
    return result


# ----------------------------------------------------------------------------------------------
# LibriSpeech
# ----------------------------------------------------------------------------------------------


def import_librispeech(folder: str | Path, subset: str | None = None, normalize: bool = True) -> ImportResult:
    """Import a LibriSpeech-layout folder: ``<spk>/<chapter>/<spk>-<chapter>.trans.txt`` + audio.

    ``folder`` is a subset folder (``.../train-clean-100``) or, with ``subset``, the corpus root.
    Works for any subset and for :mod:`asr.data.synth` corpora. The speaker is taken from the path.
    """
    root = Path(folder) / subset if subset else Path(folder)
    if not root.is_dir():
        raise DataError(root, "LibriSpeech folder not found")
    trans_files = sorted(root.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise DataError(root, "no <speaker>/<chapter>/*.trans.txt files; is this a LibriSpeech subset folder?")
    result = ImportResult()
    pending = []
    for trans in trans_files:
        speaker = trans.parent.parent.name
        for i, uid, text in _two_columns(trans):
            audio = next((trans.parent / (uid + s) for s in AUDIO_SUFFIXES if (trans.parent / (uid + s)).exists()),
                         None)
            if audio is None:
                result.failures.append((uid, f"{trans}:{i}: audio file {uid}.flac not found"))
            elif not text.strip():
                result.failures.append((uid, f"{trans}:{i}: empty transcript"))
            else:
                pending.append((uid, str(audio.resolve()), _text(text, normalize), speaker))
    return _with_durations(pending, result)


# ----------------------------------------------------------------------------------------------
# Kaldi data directories
# ----------------------------------------------------------------------------------------------


def _read_wav_scp(path: Path) -> dict[str, str]:
    recordings = {}
    for i, rec, value in _two_columns(path):
        if value.rstrip().endswith("|"):
            raise DataError(f"{path}:{i}", "command pipes in wav.scp are not supported; write the audio to "
                                           "files first (e.g. `wav-copy scp:wav.scp ark,scp:...` or sox) "
                                           "and list their paths")
        if not value:
            raise DataError(f"{path}:{i}", f"recording '{rec}' has no path")
        audio = Path(value.strip())
        if not audio.is_absolute():
            # Kaldi paths are relative to the recipe folder; the data dir's parent is the best guess.
            audio = (path.parent / audio) if (path.parent / audio).exists() else Path.cwd() / audio
        recordings[rec] = str(audio.resolve())
    return recordings


def _read_segments(path: Path, recordings: dict[str, str], result: ImportResult) -> dict[str, tuple[str, float, float]]:
    """``{utt: (recording, start, end)}``; end -1 (Kaldi's "to the end") is kept as -1."""
    segments = {}
    for i, utt, rest in _two_columns(path):
        parts = rest.split()
        try:
            rec, start, end = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            result.failures.append((utt, f"{path}:{i}: expected '<utt> <recording> <start> <end>'"))
            continue
        if rec not in recordings:
            result.failures.append((utt, f"{path}:{i}: recording '{rec}' not in wav.scp"))
        elif start < 0 or (end != -1 and end <= start):
            result.failures.append((utt, f"{path}:{i}: bad segment times {start} {end}"))
        else:
            segments[utt] = (rec, start, end)
    return segments


def import_kaldi(data_dir: str | Path, normalize: bool = True) -> ImportResult:
    """Import a Kaldi data dir: ``wav.scp`` (file paths), ``text``, optional ``segments`` and ``utt2spk``."""
    folder = Path(data_dir)
    for name in ("wav.scp", "text"):
        if not (folder / name).is_file():
            raise DataError(folder, f"not a Kaldi data dir: {name} is missing")
    recordings = _read_wav_scp(folder / "wav.scp")
    texts = {utt: text for _, utt, text in _two_columns(folder / "text")}
    spk = {utt: s.strip() for _, utt, s in _two_columns(folder / "utt2spk")} if (folder / "utt2spk").is_file() else {}
    result = ImportResult()
    if (folder / "segments").is_file():
        segments = _read_segments(folder / "segments", recordings, result)
    else:
        segments = {rec: (rec, 0.0, -1.0) for rec in recordings}
    durations = header_durations(recordings[rec] for rec, _, _ in segments.values())
    for utt, (rec, start, end) in segments.items():
        audio = recordings[rec]
        total = durations[audio]
        text = texts.get(utt)
        if isinstance(total, str):
            result.failures.append((utt, total))
        elif text is None:
            result.failures.append((utt, "no transcript in text"))
        elif not _text(text, normalize):
            result.failures.append((utt, "transcript is empty after normalisation"))
        elif start >= total or end > total + 0.05:
            result.failures.append((utt, f"segment {start}-{end} s beyond the audio ({total:.2f} s)"))
        else:
            stop = total if end == -1 else min(end, total)
            result.utterances.append(Utterance(utt, audio, round(stop - start, 6), _text(text, normalize),
                                               spk.get(utt, ""), start))
    return result


def export_kaldi(utts: Iterable[Utterance], out_dir: str | Path, segments: bool | None = None) -> Path:
    """Write a Kaldi data dir (wav.scp, text, utt2spk, spk2utt, and segments when needed).

    ``segments`` None writes a ``segments`` file when an utterance has an offset or shares its
    audio with another; recordings are then named ``rec<N>``. An empty speaker becomes the utt id
    (Kaldi's convention for unknown speakers). Returns the folder.
    """
    utts = sorted(utts, key=lambda u: u.id)
    out = Path(out_dir)
    audios = [u.audio for u in utts]
    if segments is None:
        segments = any(u.offset > 0 for u in utts) or len(set(audios)) < len(audios)
    speaker = {u.id: u.speaker or u.id for u in utts}
    spk2utt: dict[str, list[str]] = {}
    for u in utts:
        spk2utt.setdefault(speaker[u.id], []).append(u.id)
    files = {
        "text": [f"{u.id} {u.text}" for u in utts],
        "utt2spk": [f"{u.id} {speaker[u.id]}" for u in utts],
        "spk2utt": [f"{s} {' '.join(ids)}" for s, ids in sorted(spk2utt.items())],
    }
    if segments:
        rec_ids = {a: f"rec{i:06d}" for i, a in enumerate(sorted(set(audios)))}
        files["wav.scp"] = [f"{r} {a}" for a, r in sorted(rec_ids.items(), key=lambda kv: kv[1])]
        files["segments"] = [f"{u.id} {rec_ids[u.audio]} {u.offset:.3f} {u.offset + u.duration:.3f}" for u in utts]
    else:
        files["wav.scp"] = [f"{u.id} {u.audio}" for u in utts]
    for name, lines in files.items():
        atomic_write_text(out / name, "".join(line + "\n" for line in lines))
    if not segments and (out / "segments").exists():
        (out / "segments").unlink()  # a stale segments file would re-cut the new wav.scp
    return out


# ----------------------------------------------------------------------------------------------
# FSDD and TSV
# ----------------------------------------------------------------------------------------------


def import_fsdd(folder: str | Path, split: str = "train", holdout_speaker: str | None = None) -> ImportResult:
    """Import the Free Spoken Digit Dataset ``recordings/`` folder (``{digit}_{speaker}_{take}.wav``).

    ``split`` is ``train``, ``dev``, ``test`` or ``all``. The official split puts takes 0-4 in test;
    with ``holdout_speaker`` that speaker's files are test instead. Of the rest, takes 45-49 are dev
    and the others train, so train, dev and test never share a file. The transcript is the digit's
    English word, upper case ("SEVEN").
    """
    if split not in FSDD_SPLITS:
        raise DataError(split, f"split must be one of {', '.join(FSDD_SPLITS)}")
    root = Path(folder)
    if not root.is_dir():
        raise DataError(root, "FSDD recordings folder not found")
    files = sorted(root.glob("*.wav"))
    speakers = {m.group(2) for f in files if (m := FSDD_NAME_RE.match(f.name))}
    if holdout_speaker is not None and holdout_speaker not in speakers:
        raise DataError(root, f"speaker '{holdout_speaker}' not found (speakers: {', '.join(sorted(speakers))})")
    result = ImportResult()
    pending = []
    for f in files:
        m = FSDD_NAME_RE.match(f.name)
        if not m:
            result.failures.append((f.name, "name is not {digit}_{speaker}_{take}.wav"))
            continue
        digit, speaker, take = int(m.group(1)), m.group(2), int(m.group(3))
        if split == "all" or _fsdd_split(speaker, take, holdout_speaker) == split:
            pending.append((f.stem, str(f.resolve()), number_to_words(digit), speaker))
    return _with_durations(pending, result)


def _fsdd_split(speaker: str, take: int, holdout_speaker: str | None) -> str:
    is_test = speaker == holdout_speaker if holdout_speaker is not None else take in FSDD_TEST_TAKES
    if is_test:
        return "test"
    return "dev" if take in FSDD_DEV_TAKES else "train"


def import_tsv(path: str | Path, normalize: bool = True) -> ImportResult:
    """Import ``path<TAB>text`` lines (an optional ``path<TAB>text`` header is skipped).

    Relative paths are resolved against the TSV's folder. Ids are the file stems, made unique with a
    ``-<n>`` suffix when two files share a stem.
    """
    tsv = Path(path)
    result = ImportResult()
    pending = []
    seen: dict[str, int] = {}
    for i, line in enumerate(_read_lines(tsv), start=1):
        if not line.strip():
            continue
        audio, sep, text = line.partition("\t")
        if i == 1 and audio.strip().lower() in ("path", "audio", "file", "filename", "wav"):
            continue
        if not sep:
            result.failures.append((f"{tsv}:{i}", "expected path<TAB>text"))
            continue
        p = Path(audio.strip())
        p = p if p.is_absolute() else tsv.parent / p
        stem = p.stem
        seen[stem] = seen.get(stem, 0) + 1
        uid = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        if not text.strip():
            result.failures.append((uid, f"{tsv}:{i}: empty transcript"))
            continue
        pending.append((uid, str(p.resolve()), _text(text, normalize), ""))
    return _with_durations(pending, result)


def write_failures(path: str | Path, failures: list[tuple[str, str]]) -> None:
    """Write ``item<TAB>reason`` lines."""
    atomic_write_text(path, "".join(f"{tsv_field(item)}\t{tsv_field(reason)}\n" for item, reason in failures))


def tsv_field(text: str) -> str:
    """``text`` with tabs and line breaks turned into spaces, safe as one TSV field."""
    return " ".join(str(text).replace("\t", " ").splitlines())


# ----------------------------------------------------------------------------------------------
# One call for the CLI
# ----------------------------------------------------------------------------------------------

IMPORT_KINDS = ("librispeech", "kaldi", "fsdd", "tsv", "lhotse")


@dataclass(frozen=True)
class ImportConfig:
    """An import: which layout, from where, to which manifest."""

    kind: str  # librispeech | kaldi | fsdd | tsv | lhotse
    source: str
    out: str
    failures: str = ""  # "" = <out without .jsonl>.failures.tsv, written only when something failed
    subset: str = ""  # librispeech: subset folder under ``source``
    split: str = "train"  # fsdd: train | dev | test | all
    holdout_speaker: str = ""  # fsdd: this speaker is the test set
    normalize: bool = True

    def __post_init__(self):
        if self.kind not in IMPORT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(IMPORT_KINDS)}")

    @property
    def failures_path(self) -> Path:
        out = Path(self.out)
        return Path(self.failures) if self.failures else out.with_name(out.name.removesuffix(".jsonl") + ".failures.tsv")


def import_manifest(cfg: ImportConfig) -> ImportResult:
    """Import ``cfg.source``, write the manifest ``cfg.out`` and, if any item failed, the failures list.

    Raises DataError when nothing could be imported.
    """
    from asr.data.manifest import write_manifest

    if cfg.kind == "librispeech":
        result = import_librispeech(cfg.source, cfg.subset or None, cfg.normalize)
    elif cfg.kind == "kaldi":
        result = import_kaldi(cfg.source, cfg.normalize)
    elif cfg.kind == "fsdd":
        result = import_fsdd(cfg.source, cfg.split, cfg.holdout_speaker or None)
    elif cfg.kind == "lhotse":
        from asr.data.lhotse_io import import_lhotse

        result = ImportResult(*import_lhotse(cfg.source, cfg.normalize))
    else:
        result = import_tsv(cfg.source, cfg.normalize)
    if not result.utterances:
        first = f"; first failure: {result.failures[0][0]}: {result.failures[0][1]}" if result.failures else ""
        raise DataError(cfg.source, f"no utterances imported{first}")
    write_manifest(cfg.out, result.utterances)
    if result.failures:
        write_failures(cfg.failures_path, result.failures)
    return result
