"""lhotse CutSets to and from manifests, through the lhotse package (the optional ``asr[lhotse]`` extra).

A cut becomes one utterance: its recording's audio file, the cut's start as ``offset`` and its
duration, the texts of its supervisions (in time order) joined, and the first supervision's speaker.
Only cuts over a single audio file can be read this way (lhotse also has URLs, shell commands and
in-memory audio); any other cut is listed as a failure with its reason and the import goes on.
Export writes one MonoCut per utterance with one supervision over the whole cut; recordings are
described from the audio headers (soundfile), so no samples are decoded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from asr.data.manifest import Utterance
from asr.errors import ConfigError, DataError


def _lhotse():
    try:
        import lhotse
    except ImportError as e:
        raise ConfigError("lhotse", f"the lhotse package is not installed (pip install 'asr[lhotse]'): {e}") from None
    return lhotse


def import_lhotse(path: str | Path, normalize: bool = True) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Read a CutSet file (``.jsonl`` or ``.jsonl.gz``): ``(utterances, [(cut id, reason)] skipped)``.

    Transcripts are normalised as the other importers do (:func:`asr.text.normalize_librispeech`)
    unless ``normalize=False``. Raises DataError when the file is missing or is not a CutSet.
    """
    lhotse = _lhotse()
    try:
        cuts = lhotse.CutSet.from_file(path)
        cut_list = list(cuts)
    except FileNotFoundError:
        raise DataError(str(path), "no such file") from None
    except Exception as e:  # lhotse raises plain exceptions (KeyError, ValueError, json errors) on bad input
        raise DataError(str(path), f"not a lhotse CutSet: {type(e).__name__}: {e}") from None
    utts, failures = [], []
    for cut in cut_list:
        try:
            utts.append(_cut_to_utterance(cut, normalize))
        except DataError as e:
            failures.append((e.what, e.reason))
    return utts, failures


def _cut_to_utterance(cut, normalize: bool) -> Utterance:
    from asr.text import normalize_librispeech

    recording = getattr(cut, "recording", None)
    if recording is None:
        raise DataError(cut.id, "cut has no recording")
    sources = recording.sources
    if len(sources) != 1 or sources[0].type != "file":
        kinds = ",".join(s.type for s in sources)
        raise DataError(cut.id, f"audio must be one file (got source type {kinds or 'none'})")
    audio = Path(sources[0].source)
    if not audio.is_file():
        raise DataError(cut.id, f"audio file not found: {audio}")
    sups = sorted(cut.supervisions, key=lambda s: s.start)
    text = " ".join(" ".join(s.text or "" for s in sups).split())
    text = normalize_librispeech(text) if normalize else text
    if not text:
        raise DataError(cut.id, "no transcript in the cut's supervisions")
    speaker = next((s.speaker for s in sups if s.speaker), "")
    return Utterance(id=cut.id, audio=str(audio.resolve()), duration=round(float(cut.duration), 4), text=text,
                     speaker=speaker or "", offset=round(float(cut.start), 4))


def export_lhotse(utts: Iterable[Utterance], out: str | Path) -> Path:
    """Write utterances as a lhotse CutSet to ``out`` (``.jsonl`` or ``.jsonl.gz``)."""
    import soundfile as sf

    lhotse = _lhotse()
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment

    recordings: dict[str, Recording] = {}
    cuts = []
    for u in utts:
        rec = recordings.get(u.audio)
        if rec is None:
            try:
                info = sf.info(u.audio)
            except (RuntimeError, OSError) as e:
                raise DataError(u.audio, f"cannot read audio header: {e}") from None
            rec = Recording(id=Path(u.audio).stem if Path(u.audio).stem not in {r.id for r in recordings.values()}
                            else f"{Path(u.audio).stem}-{len(recordings)}",
                            sources=[AudioSource(type="file", channels=list(range(info.channels)), source=u.audio)],
                            sampling_rate=info.samplerate, num_samples=info.frames,
                            duration=info.frames / info.samplerate)
            recordings[u.audio] = rec
        sup = SupervisionSegment(id=u.id, recording_id=rec.id, start=0.0, duration=u.duration, channel=0,
                                 text=u.text, speaker=u.speaker or None)
        cuts.append(MonoCut(id=u.id, start=u.offset, duration=u.duration, channel=0, recording=rec,
                            supervisions=[sup]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lhotse.CutSet.from_cuts(cuts).to_file(out)
    return out
