"""A synthetic multi-speaker corpus in LibriSpeech's exact layout, spoken by flite and espeak-ng.

Layout written under ``out_dir``::

    SPEAKERS.TXT                                  ;ID|SEX|SUBSET|MINUTES|NAME, as in LibriSpeech
    <subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac   16 kHz mono PCM_16

A speaker is one TTS voice with its own fixed pitch and rate. Train, dev and test speakers are
disjoint, and one flite voice (``heldout_voice``) speaks only in test, or only in a subset of its own
(``voice_subset``), so that generalisation to a voice never heard in training is measured.
Sentences are disjoint between subsets.

Text comes from the example sentences in WordNet's glosses (Debian ``wordnet-base``) or a user file,
normalised with :func:`asr.text.normalize_librispeech`. For a model that must learn on 2 CPU cores,
``min_words``/``max_words`` keep sentences short and ``vocab`` keeps only sentences whose words are
all among the ``vocab`` most frequent words of the sentences of that length: a 600-word vocabulary of 3-10 word
sentences trains to a low WER in minutes, the full WordNet vocabulary (~40k words) does not.
With ``word_sequences`` the text is instead random sequences of ``min_words``..``max_words`` words
from a ``vocab``-word homophone-free vocabulary (:mod:`asr.data.wordseq`), a small-vocabulary task in
the manner of AN4 or TIDIGITS where every word is heard hundreds of times.

The work is split by concern: :mod:`asr.data.synth_plan` plans the text, the speakers and the
utterances; :mod:`asr.data.tts` speaks them (the voice catalogue, flite and espeak-ng);
:mod:`asr.data.effects` holds the audio effects; this module renders each utterance and writes the corpus.

Everything is a function of ``seed``: the speaker plan, the sentence split, and every augmentation
choice (each utterance seeds its own generator from its id), so a re-run writes byte-identical FLACs
and can skip utterances already on disk.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.audio import resample
from asr.config import to_dict
from asr.data.effects import add_noise, reverberate, synthetic_rir
from asr.data.synth_plan import (
    MAX_SPEAKERS,
    SynthConfig,
    UttJob,
    load_sentences,
    plan_corpus,
    plan_jobs,
    plan_speakers,
    speed_factors,
    split_sentences,
    subset_sizes,
    wordnet_examples,
)
from asr.data.tts import FLITE_VOICES, Speaker, check_tools, parse_wav, tts
from asr.errors import DataError
from asr.io_utils import atomic_path, atomic_write_text

# The planning and engine names are part of this module's interface (the corpus entry point).
__all__ = ["FLITE_VOICES", "MAX_SPEAKERS", "Speaker", "SynthConfig", "SynthReport", "UttJob", "augment",
           "check_tools", "load_sentences", "parse_wav", "plan_corpus", "plan_jobs", "plan_speakers",
           "render", "speed_factors", "split_sentences", "subset_sizes", "synthesize_corpus", "tts",
           "wordnet_examples", "write_flac"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CONFIG_FILE = "synth_config.json"
FAILURES_FILE = "synth_failures.tsv"


@dataclass
class SynthReport:
    """What a synthesis run produced."""

    out_dir: str
    utterances: dict[str, int] = field(default_factory=dict)  # subset -> utterances on disk
    seconds: dict[str, float] = field(default_factory=dict)  # subset -> audio seconds on disk
    speakers: dict[str, int] = field(default_factory=dict)  # subset -> speakers
    voices: dict[str, dict[str, int]] = field(default_factory=dict)  # subset -> engine voice -> utterances
    sentences: dict[str, int] = field(default_factory=dict)  # subset -> distinct sentences
    synthesized: int = 0
    skipped_existing: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (utt id, reason)
    wall_seconds: float = 0.0  # the whole call, text loading included
    synth_wall_seconds: float = 0.0  # the synthesis loop only
    synth_audio_seconds: float = 0.0  # audio made in this run (not skipped)

    @property
    def speed(self) -> float:
        """Seconds of audio synthesised per wall-clock second of the synthesis loop."""
        return self.synth_audio_seconds / max(self.synth_wall_seconds, 1e-9)



# ----------------------------------------------------------------------------------------------
# Rendering one utterance
# ----------------------------------------------------------------------------------------------


def augment(wave: np.ndarray, job: UttJob, rng: np.random.Generator) -> np.ndarray:
    """Reverberation then additive white noise at ``job.noise_snr`` dB. (n,) float32 -> (n,)."""
    if job.reverb_prob > 0 and rng.random() < job.reverb_prob:
        wave = reverberate(wave, synthetic_rir(rng))
    if job.noise_snr is not None:
        wave = add_noise(wave, rng.standard_normal(wave.size).astype(np.float32), job.noise_snr)
    return wave


def render(job: UttJob) -> np.ndarray:
    """Synthesise one utterance at 16 kHz with its augmentation. Returns (n,) int16."""
    samples, rate = tts(job.text, job.speaker)
    wave = samples.astype(np.float32) / 32768.0
    rng = np.random.default_rng(job.seed)
    factor = 1.0
    if job.augment and job.speed_factors:
        factor = job.speed_factors[rng.integers(len(job.speed_factors))]
    # Speed perturbation as in Kaldi (tempo and pitch together): pretend the rate was rate*factor.
    wave = resample(wave, rate * factor, SAMPLE_RATE)
    if job.augment and (job.reverb_prob > 0 or job.noise_snr is not None):
        wave = augment(wave, job, rng)
    peak = float(np.abs(wave).max())
    if peak > 0.99:
        wave = wave * np.float32(0.99 / peak)
    return np.round(wave * 32767.0).astype(np.int16)


def write_flac(path: str | Path, samples: np.ndarray) -> None:
    """Write (n,) int16 as 16 kHz PCM_16 FLAC atomically."""
    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _run_job(job: UttJob) -> tuple[str, float, str]:
    """Worker: synthesise and write one utterance. Returns (utt id, seconds, error or "")."""
    try:
        samples = render(job)
        write_flac(job.path, samples)
        return job.utt_id, samples.size / SAMPLE_RATE, ""
    except (RuntimeError, ValueError, OSError) as e:
        return job.utt_id, 0.0, str(e).splitlines()[0] if str(e) else e.__class__.__name__


# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------


def _check_same_config(cfg: SynthConfig) -> None:
    # Resuming into a corpus made with other settings would mix two corpora under one layout.
    path = Path(cfg.out_dir) / CONFIG_FILE
    wanted = {k: v for k, v in to_dict(cfg).items() if k not in ("nj", "out_dir")}
    if path.exists():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != wanted:
            raise DataError(path, "corpus was synthesised with other settings; use a new --out folder")
    else:
        atomic_write_text(path, json.dumps(wanted, indent=2, sort_keys=True) + "\n")


def _synthesize(jobs: list[UttJob], nj: int) -> list[tuple[str, float, str]]:
    from tqdm import tqdm

    if not jobs:
        return []
    bar = tqdm(total=len(jobs), desc="synthesising", unit="utt", smoothing=0.1)
    results = []
    try:
        if nj <= 1:
            for job in jobs:
                results.append(_run_job(job))
                bar.update()
        else:
            # Threads suffice: the work happens in TTS subprocesses, soxr, numpy and libsndfile, all of
            # which release the GIL, and threads avoid the fork/spawn pitfalls of process pools.
            with ThreadPoolExecutor(nj) as pool:
                for res in pool.map(_run_job, jobs):
                    results.append(res)
                    bar.update()
    finally:
        bar.close()
    return results


def write_speakers_txt(root: Path, speakers: list[Speaker], seconds: dict[int, float]) -> None:
    """SPEAKERS.TXT in LibriSpeech's format (MINUTES = audio minutes of that speaker)."""
    lines = ["; Synthetic speakers of the asr toolkit (flite / espeak-ng voices).",
             "; Fields: reader ID, sex (F/M), corpus subset, minutes of audio, name (voice, pitch, rate)",
             ";ID  |SEX| SUBSET           |MINUTES| NAME"]
    for s in speakers:
        lines.append(f"{s.id:<5}| {s.sex} | {s.subset:<16} | {seconds.get(s.id, 0.0) / 60:5.2f} | {s.name}")
    atomic_write_text(root / "SPEAKERS.TXT", "\n".join(lines) + "\n")


def write_transcripts(jobs: list[UttJob], ok: set[str]) -> None:
    """One ``<speaker>-<chapter>.trans.txt`` per chapter, listing only utterances on disk."""
    chapters: dict[Path, list[str]] = {}
    for job in jobs:
        folder = Path(job.path).parent
        lines = chapters.setdefault(folder, [])
        if job.utt_id in ok:
            lines.append(f"{job.utt_id} {job.text}")
    for folder, lines in chapters.items():
        if lines:
            atomic_write_text(folder / f"{folder.parent.name}-{folder.name}.trans.txt", "\n".join(lines) + "\n")


def _existing_durations(jobs: list[UttJob]) -> tuple[dict[str, float], list[tuple[str, str]]]:
    durations, failures = {}, []
    for job in jobs:
        try:
            durations[job.utt_id] = sf.info(job.path).duration
        except (RuntimeError, OSError) as e:  # sf.LibsndfileError is a RuntimeError
            failures.append((job.utt_id, f"existing {job.path} unreadable ({e}); delete it to re-synthesise"))
    return durations, failures


def _tally(cfg: SynthConfig, report: SynthReport, speakers: list[Speaker], jobs: list[UttJob],
           durations: dict[str, float]) -> dict[int, float]:
    """Fill the per-subset counts of ``report``; return audio seconds per speaker id."""
    spk_seconds: Counter = Counter()
    for job in jobs:
        if job.utt_id in durations:
            subset = job.speaker.subset
            spk_seconds[job.speaker.id] += durations[job.utt_id]
            report.utterances[subset] = report.utterances.get(subset, 0) + 1
            report.seconds[subset] = report.seconds.get(subset, 0.0) + durations[job.utt_id]
            voices = report.voices.setdefault(subset, {})
            voice = f"{job.speaker.engine} {job.speaker.voice}"
            voices[voice] = voices.get(voice, 0) + 1
    for subset in cfg.subsets:
        report.speakers[subset] = sum(1 for s in speakers if s.subset == subset)
        report.sentences[subset] = len({j.text for j in jobs if j.speaker.subset == subset})
    return spk_seconds


def synthesize_corpus(cfg: SynthConfig) -> SynthReport:
    """Synthesise (or finish synthesising) the corpus described by ``cfg``.

    Utterances whose FLAC exists are skipped, so an interrupted run resumes. Utterances whose TTS
    fails are left out of the transcripts and listed in ``report.failures`` and ``synth_failures.tsv``.
    Raises DataError for missing TTS packages, unreadable text or an impossible size.
    """
    start = time.perf_counter()
    speakers, jobs = plan_corpus(cfg)
    check_tools({s.engine for s in speakers})
    root = Path(cfg.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg)

    todo = [j for j in jobs if not Path(j.path).exists()]
    log.info("corpus %s: %d utterances planned, %d to synthesise", root, len(jobs), len(todo))
    synth_start = time.perf_counter()
    results = _synthesize(todo, cfg.nj)
    report = SynthReport(str(root), synthesized=sum(1 for r in results if not r[2]),
                         skipped_existing=len(jobs) - len(todo),
                         synth_wall_seconds=time.perf_counter() - synth_start,
                         synth_audio_seconds=sum(sec for _, sec, err in results if not err))
    attempted = {j.utt_id for j in todo}
    durations, failures = _existing_durations([j for j in jobs if j.utt_id not in attempted])
    durations.update((uid, sec) for uid, sec, err in results if not err)
    report.failures = sorted(failures + [(uid, err) for uid, _, err in results if err])

    write_transcripts(jobs, set(durations))
    write_speakers_txt(root, speakers, _tally(cfg, report, speakers, jobs, durations))
    failures_path = root / FAILURES_FILE
    if report.failures:
        atomic_write_text(failures_path, "".join(f"{u}\t{r}\n" for u, r in report.failures))
    elif failures_path.exists():
        failures_path.unlink()
    report.wall_seconds = time.perf_counter() - start
    return report
