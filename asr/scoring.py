"""Word and character error rates with jiwer, and sclite-style reports.

:func:`score` aligns every hypothesis with its reference after the same text normalisation, and
returns a :class:`ScoreReport` with totals, per-utterance alignments, per-speaker summaries, the most
frequent confusion pairs, the hypothesis/reference length ratio and the decoder's guard counts.
:func:`write_report` writes ``wer.txt`` (sclite-like), ``results.json`` and ``summary.md`` (one Markdown
table row: ``| set | #utt | #words | WER | CER | S | D | I |``).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jiwer

from asr.config import to_dict
from asr.errors import DataError, ManifestError
from asr.io_utils import atomic_write_text

SUMMARY_HEADER = "| set | #utt | #words | WER % | CER % | S | D | I |\n|---|---:|---:|---:|---:|---:|---:|---:|"
_APOSTROPHES = "'\u2019\u02bc"


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """Normalisation applied identically to references and hypotheses before alignment."""

    normalize_case: bool = True  # compare case-insensitively (both sides upper-cased)
    keep_punctuation: bool = False
    keep_apostrophes: bool = False  # only matters when punctuation is removed
    top_confusions: int = 20


def normalize(text: str, options: ScoreOptions) -> str:
    """Apply ``options`` to one transcript; whitespace is always collapsed."""
    if options.normalize_case:
        text = text.upper()
    if not options.keep_punctuation:
        keep = _APOSTROPHES if options.keep_apostrophes else ""
        # Punctuation glued inside a word ("don't" without --keep-apostrophes) is dropped, not split,
        # so the word stays one token on both sides.
        text = "".join(ch for ch in text if ch.isalnum() or ch.isspace() or ch in keep)
    return " ".join(text.split())


@dataclasses.dataclass
class UttScore:
    """Alignment of one utterance: counts and sclite-style REF/HYP/Eval lines."""

    id: str
    speaker: str
    ref: str
    hyp: str
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    ref_line: str
    hyp_line: str
    eval_line: str

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def num_words(self) -> int:
        return self.hits + self.substitutions + self.deletions


@dataclasses.dataclass
class ScoreReport:
    """Totals and details of one scored set. ``wer``/``cer`` are fractions (0.1 = 10 %)."""

    num_utts: int
    num_words: int
    num_chars: int
    wer: float
    cer: float
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    char_errors: int
    length_ratio: float  # hypothesis words / reference words
    utterances: list[UttScore]
    speakers: dict[str, dict[str, Any]]
    confusions: list[tuple[str, str, int]]
    guards: dict[str, int]
    missing: list[str]  # reference ids with no hypothesis (scored as empty hypotheses)
    extra: list[str]  # hypothesis ids with no reference (ignored)
    options: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "utterances"}
        out["confusions"] = [{"ref": r, "hyp": h, "count": c} for r, h, c in self.confusions]
        out["utterances"] = [
            {"id": u.id, "speaker": u.speaker, "ref": u.ref, "hyp": u.hyp, "hits": u.hits,
             "substitutions": u.substitutions, "deletions": u.deletions, "insertions": u.insertions}
            for u in self.utterances
        ]
        return out


def _align_lines(ref: list[str], hyp: list[str], chunks) -> tuple[str, str, str, Counter]:
    """sclite-style columns: correct words lower-case, errors upper-case, gaps as ``***``."""
    cols: list[tuple[str, str, str]] = []
    pairs: Counter = Counter()
    for ch in chunks:
        if ch.type == "equal":
            cols += [(w.lower(), w.lower(), "") for w in ref[ch.ref_start_idx : ch.ref_end_idx]]
        elif ch.type == "substitute":
            for r, h in zip(ref[ch.ref_start_idx : ch.ref_end_idx], hyp[ch.hyp_start_idx : ch.hyp_end_idx]):
                cols.append((r.upper(), h.upper(), "S"))
                pairs[(r, h)] += 1
        elif ch.type == "delete":
            cols += [(w.upper(), "*" * len(w), "D") for w in ref[ch.ref_start_idx : ch.ref_end_idx]]
        else:
            cols += [("*" * len(w), w.upper(), "I") for w in hyp[ch.hyp_start_idx : ch.hyp_end_idx]]
    widths = [max(len(r), len(h), 1) for r, h, _ in cols]
    line = lambda k: " ".join(c[k].ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    return line(0), line(1), line(2), pairs


def score(refs: Mapping[str, str], hyps: Mapping[str, str], speakers: Mapping[str, str] | None = None,
          options: ScoreOptions | None = None, guards: Mapping[str, Mapping[str, int]] | None = None) -> ScoreReport:
    """Score hypotheses against references (both ``{utt_id: text}``), in the references' order.

    A reference without a hypothesis counts as an empty hypothesis (all deletions) and is listed in
    ``missing``; hypotheses without a reference are listed in ``extra`` and ignored. ``speakers`` maps
    ids to speakers (missing -> ""); ``guards`` maps ids to the decoder's guard counts.
    """
    options = options or ScoreOptions()
    speakers = speakers or {}
    ids = list(refs)
    if not ids:
        raise DataError("score", "no reference utterances to score")
    ref_n = [normalize(refs[i], options) for i in ids]
    hyp_n = [normalize(hyps.get(i, ""), options) for i in ids]
    words = jiwer.process_words(ref_n, hyp_n)
    chars = jiwer.process_characters(ref_n, hyp_n)
    utts: list[UttScore] = []
    confusions: Counter = Counter()
    for k, uid in enumerate(ids):
        ref_w, hyp_w = words.references[k], words.hypotheses[k]
        counts = Counter()
        for ch in words.alignments[k]:
            counts[ch.type] += max(ch.ref_end_idx - ch.ref_start_idx, ch.hyp_end_idx - ch.hyp_start_idx)
        r_line, h_line, e_line, pairs = _align_lines(ref_w, hyp_w, words.alignments[k])
        confusions.update(pairs)
        utts.append(UttScore(uid, speakers.get(uid, ""), ref_n[k], hyp_n[k], counts["equal"], counts["substitute"],
                             counts["delete"], counts["insert"], r_line, h_line, e_line))
    num_words = sum(u.num_words for u in utts)
    num_chars = sum(len(r) for r in ref_n)
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    guard_totals: Counter = Counter()
    for uid in ids:
        guard_totals.update({k: int(v) for k, v in (guards or {}).get(uid, {}).items()})
    hyp_words = sum(len(h.split()) for h in hyp_n)
    return ScoreReport(
        num_utts=len(ids), num_words=num_words, num_chars=num_chars,
        wer=sum(u.errors for u in utts) / max(num_words, 1), cer=char_errors / max(num_chars, 1),
        hits=words.hits, substitutions=words.substitutions, deletions=words.deletions, insertions=words.insertions,
        char_errors=char_errors, length_ratio=hyp_words / max(num_words, 1), utterances=utts,
        speakers=_speaker_summary(utts),
        confusions=[(r, h, c) for (r, h), c in confusions.most_common(options.top_confusions)],
        guards=dict(sorted(guard_totals.items())), missing=[i for i in ids if i not in hyps],
        extra=[i for i in hyps if i not in refs], options=to_dict(options),
    )


def _speaker_summary(utts: list[UttScore]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for u in utts:
        s = out.setdefault(u.speaker, {"num_utts": 0, "num_words": 0, "substitutions": 0, "deletions": 0,
                                       "insertions": 0})
        s["num_utts"] += 1
        s["num_words"] += u.num_words
        s["substitutions"] += u.substitutions
        s["deletions"] += u.deletions
        s["insertions"] += u.insertions
    for s in out.values():
        s["wer"] = (s["substitutions"] + s["deletions"] + s["insertions"]) / max(s["num_words"], 1)
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def read_hyps(path: str | Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Read ``hyps.jsonl`` (id, text, guards) or a Kaldi ``text`` file (``id TEXT`` lines).

    Returns ``(texts, guards)``. Raises ManifestError naming the file and line of a bad entry.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ManifestError(path, "hypothesis file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(path, f"cannot read hypotheses ({e.__class__.__name__})") from None
    texts: dict[str, str] = {}
    guards: dict[str, dict[str, int]] = {}
    as_json = path.suffix == ".jsonl"
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if as_json:
            try:
                obj = json.loads(line)
                uid, text = obj["id"], obj.get("text", "")
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ManifestError(path, "expected a JSON object with 'id' and 'text'", n) from None
            if not isinstance(uid, str) or not isinstance(text, str):
                raise ManifestError(path, "'id' and 'text' must be strings", n)
            guards[uid] = {k: int(v) for k, v in (obj.get("guards") or {}).items()}
        else:
            uid, _, text = line.strip().partition(" ")
        if uid in texts:
            raise ManifestError(path, f"duplicate id '{uid}'", n)
        texts[uid] = text
    return texts, guards


def format_wer_txt(report: ScoreReport, name: str) -> str:
    """An sclite-like text report: totals, speakers, confusions, then every utterance's alignment."""
    r = report
    lines = [
        f"set: {name}",
        f"%WER {100 * r.wer:.2f} [ {r.substitutions + r.deletions + r.insertions} / {r.num_words}, "
        f"{r.insertions} ins, {r.deletions} del, {r.substitutions} sub ]",
        f"%CER {100 * r.cer:.2f} [ {r.char_errors} / {r.num_chars} ]",
        f"utterances: {r.num_utts} (missing hypotheses: {len(r.missing)}, extra ignored: {len(r.extra)})",
        f"hyp/ref length ratio: {r.length_ratio:.3f}",
        "guards fired: " + (", ".join(f"{k} {v}" for k, v in r.guards.items()) or "none"),
        "normalisation: " + ", ".join(f"{k}={v}" for k, v in r.options.items()),
        "",
        "SPEAKERS",
        f"{'speaker':<20} {'#utt':>6} {'#words':>7} {'#S':>5} {'#D':>5} {'#I':>5} {'%WER':>7}",
    ]
    for spk, s in r.speakers.items():
        lines.append(f"{spk or '-':<20} {s['num_utts']:>6} {s['num_words']:>7} {s['substitutions']:>5} "
                     f"{s['deletions']:>5} {s['insertions']:>5} {100 * s['wer']:>7.2f}")
    lines += ["", "CONFUSION PAIRS (ref -> hyp: count)"]
    lines += [f"{c:>5}: {ref} -> {hyp}" for ref, hyp, c in r.confusions] or ["none"]
    lines += ["", "ALIGNMENTS"]
    for u in r.utterances:
        lines += [
            f"id: {u.id}" + (f"  speaker: {u.speaker}" if u.speaker else ""),
            f"Scores: (#C #S #D #I) {u.hits} {u.substitutions} {u.deletions} {u.insertions}",
            f"REF:  {u.ref_line}",
            f"HYP:  {u.hyp_line}",
            f"Eval: {u.eval_line}",
            "",
        ]
    return "\n".join(lines)


def summary_row(report: ScoreReport, name: str) -> str:
    """One Markdown table row matching :data:`SUMMARY_HEADER`."""
    r = report
    return (f"| {name} | {r.num_utts} | {r.num_words} | {100 * r.wer:.2f} | {100 * r.cer:.2f} "
            f"| {r.substitutions} | {r.deletions} | {r.insertions} |")


def write_report(report: ScoreReport, out_dir: str | Path, name: str) -> None:
    """Write ``wer.txt``, ``results.json`` and ``summary.md`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "wer.txt", format_wer_txt(report, name) + "\n")
    payload = {"set": name, **report.to_json()}
    atomic_write_text(out_dir / "results.json", json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "summary.md", summary_row(report, name) + "\n")


def score_files(ref_manifest: str | Path, hyp_path: str | Path, out_dir: str | Path,
                options: ScoreOptions | None = None, name: str | None = None) -> ScoreReport:
    """Score a hypothesis file against a manifest's texts and write the report files."""
    from asr.data.manifest import read_manifest

    utts = read_manifest(ref_manifest)
    hyps, guards = read_hyps(hyp_path)
    report = score({u.id: u.text for u in utts}, hyps, {u.id: u.speaker for u in utts}, options, guards)
    write_report(report, out_dir, name or Path(out_dir).name)
    return report


__all__ = ["ScoreOptions", "ScoreReport", "UttScore", "format_wer_txt", "normalize", "read_hyps", "score",
           "score_files", "summary_row",
           "write_report", "SUMMARY_HEADER"]
