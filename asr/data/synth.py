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

Everything is a function of ``seed``: the speaker plan, the sentence split, and every augmentation
choice (each utterance seeds its own generator from its id), so a re-run writes byte-identical FLACs
and can skip utterances already on disk.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import re
import shutil
import subprocess
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.config import to_dict
from asr.data.digits import digit_strings
from asr.data.wordseq import word_sequences, word_vocabulary
from asr.errors import DataError
from asr.io_utils import atomic_path, atomic_write_text
from asr.text import normalize_librispeech

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WORDNET_DIR = "/usr/share/wordnet"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
FLITE_VOICES = {"kal16": "M", "awb": "M", "rms": "M", "slt": "F"}
ESPEAK_VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                 "en-gb-x-gbcwmd", "en-us-nyc")
ESPEAK_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5")
DEBIAN_PACKAGES = {"flite": "flite", "espeak-ng": "espeak-ng"}
# Each espeak-ng speaker takes a distinct voice+variant; flite speakers take every other slot.
MAX_SPEAKERS = 2 * len(ESPEAK_VOICES) * len(ESPEAK_VARIANTS)
UTTS_PER_CHAPTER = 50
# Seconds of audio per utterance ~ 0.58 + 0.22 * words (least-squares fit over 100 utterances of the
# 24 default voices); used only to turn `hours` into an utterance count before synthesis.
SECONDS_PER_WORD = 0.22
SECONDS_PER_UTT = 0.58
CONFIG_FILE = "synth_config.json"
FAILURES_FILE = "synth_failures.tsv"


@dataclass(frozen=True)
class SynthConfig:
    """How to synthesise a corpus. Sizes: ``utterances`` wins over ``hours``; one must be > 0."""

    out_dir: str
    utterances: int = 0
    hours: float = 0.0
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    dev_utterances: int = 0  # > 0 overrides dev_fraction
    test_utterances: int = 0  # > 0 overrides test_fraction
    speakers: int = 24  # total over the three subsets
    dev_speakers: int = 0  # 0: max(2, speakers // 6)
    test_speakers: int = 0  # 0: max(2, speakers // 6)
    heldout_voice: str = "rms"  # flite voice heard only in test
    train_subset: str = "train-clean"
    dev_subset: str = "dev-clean"
    test_subset: str = "test-clean"
    # A fourth subset spoken only by ``heldout_voice`` (e.g. "test-voice"); "" = that voice is one of
    # the test speakers. Separate, the test set measures unseen speakers of the training voices and this
    # one a voice never heard, as LibriSpeech's test-clean and test-other separate easy and hard speakers.
    voice_subset: str = ""
    text_file: str = ""  # one sentence per line; "" = WordNet examples
    wordnet_dir: str = WORDNET_DIR
    min_words: int = 1
    max_words: int = 30
    vocab: int = 0  # > 0: keep sentences whose words are all among the N most frequent
    # True: random sequences of min..max words from a ``vocab``-word homophone-free vocabulary
    # (asr.data.wordseq) instead of the sentences themselves
    word_sequences: bool = False
    min_phones: int = 3  # word_sequences: leave out words of fewer phones (THE, OF, IN, A)
    # True: digit words alone and strings of min..max digit words (asr.data.digits) instead of sentences
    digits: bool = False
    noise_snr: float | None = None  # dB; None = no additive noise
    reverb_prob: float = 0.0
    speed_perturb: str = ""  # e.g. "0.9,1.0,1.1": one factor drawn per utterance
    augment_subsets: str = "train"  # which subsets (train/dev/test) get the augmentation
    seed: int = 0
    nj: int = 2

    def __post_init__(self):
        if self.utterances <= 0 and self.hours <= 0:
            raise ValueError("give a corpus size: utterances > 0 or hours > 0")
        if not 6 <= self.speakers <= MAX_SPEAKERS:  # 20+ for a real corpus; tests use a handful
            raise ValueError(f"speakers must be in [6, {MAX_SPEAKERS}], got {self.speakers}")
        if not set(self.augment_subsets.replace(" ", "").split(",")) <= {"train", "dev", "test", ""}:
            raise ValueError(f"augment_subsets must list train, dev and/or test, got {self.augment_subsets!r}")
        if not 0 <= self.dev_fraction < 1 or not 0 <= self.test_fraction < 1 \
                or self.dev_fraction + self.test_fraction >= 1:
            raise ValueError("dev_fraction and test_fraction must be in [0, 1) and sum below 1")
        if self.heldout_voice not in FLITE_VOICES:
            raise ValueError(f"heldout_voice must be one of {', '.join(FLITE_VOICES)}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError("need 1 <= min_words <= max_words")
        if not 0 <= self.reverb_prob <= 1:
            raise ValueError("reverb_prob must be in [0, 1]")
        if len(set(self.subsets)) != len(self.subsets) or "" in self.subsets[:3]:
            raise ValueError("subset names must differ")
        speed_factors(self.speed_perturb)
        if self.word_sequences and self.vocab <= 0:
            raise ValueError("word_sequences needs the vocabulary size: vocab > 0")
        if self.digits and (self.word_sequences or self.text_file):
            raise ValueError("digits replaces the text: give no text_file and no word_sequences")

    @property
    def subsets(self) -> tuple[str, ...]:
        """Subset folder names: train, dev, test and the held-out voice's when there is one."""
        base = (self.train_subset, self.dev_subset, self.test_subset)
        return base + (self.voice_subset,) if self.voice_subset else base


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a TTS voice with a fixed pitch and rate."""

    id: int
    sex: str
    subset: str
    engine: str  # "flite" | "espeak-ng"
    voice: str
    pitch: int  # flite: mean F0 in Hz; espeak-ng: -p 0..99
    rate: float  # flite: duration stretch (>1 slower); espeak-ng: words per minute

    @property
    def name(self) -> str:
        return f"{self.engine} {self.voice} pitch {self.pitch} rate {self.rate:g}"


@dataclass(frozen=True)
class UttJob:
    """One utterance to synthesise: where it goes, what is said, by whom, and its augmentation."""

    utt_id: str
    path: str
    text: str
    speaker: Speaker
    seed: int
    augment: bool
    noise_snr: float | None
    reverb_prob: float
    speed_factors: tuple[float, ...]


@dataclass
class SynthReport:
    """What a synthesis run produced."""

    out_dir: str
    utterances: dict[str, int] = field(default_factory=dict)  # subset -> utterances on disk
    seconds: dict[str, float] = field(default_factory=dict)  # subset -> audio seconds on disk
    speakers: dict[str, int] = field(default_factory=dict)  # subset -> speakers
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


def speed_factors(text: str) -> tuple[float, ...]:
    """Parse ``"0.9,1.0,1.1"`` into factors; "" means no speed perturbation."""
    if not text.strip():
        return ()
    try:
        factors = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"speed_perturb must be comma-separated numbers, got {text!r}") from None
    if any(not 0.5 <= f <= 2.0 for f in factors):
        raise ValueError(f"speed_perturb factors must be in [0.5, 2], got {text!r}")
    return factors


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------

_QUOTED_RE = re.compile(r'"([^"]+)"')


def wordnet_examples(wordnet_dir: str | Path = WORDNET_DIR) -> list[str]:
    """The quoted example sentences of WordNet's glosses, raw (not normalised)."""
    folder = Path(wordnet_dir)
    paths = [folder / name for name in WORDNET_FILES]
    if not any(p.is_file() for p in paths):
        raise DataError(folder, "WordNet data files not found; install the Debian package: "
                                "sudo apt-get install wordnet-base (or pass a text file)")
    examples = []
    for path in paths:
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                # License header lines start with two spaces; a gloss follows the "|".
                if line.startswith("  ") or "|" not in line:
                    continue
                examples += _QUOTED_RE.findall(line.split("|", 1)[1])
    return examples


def load_sentences(cfg: SynthConfig) -> list[str]:
    """Normalised, de-duplicated, filtered sentences in a seed-independent (sorted) order."""
    if cfg.digits:
        return _digit_texts(cfg)
    if cfg.text_file:
        path = Path(cfg.text_file)
        try:
            raw = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(path, "text file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(path, f"cannot read text file ({e.__class__.__name__})") from None
    else:
        raw = wordnet_examples(cfg.wordnet_dir)
    normalized = sorted({t for t in map(normalize_librispeech, raw) if t})
    if cfg.word_sequences:
        return _word_sequences(cfg, normalized)
    keep = [s for s in normalized if cfg.min_words <= len(s.split()) <= cfg.max_words]
    if cfg.vocab > 0:
        # Counted over the sentences of the wanted length, whose top words are what a small model
        # must learn; over all sentences the top of the list is function words only.
        counts = Counter(w for s in keep for w in s.split())
        # Ties are broken alphabetically so the vocabulary does not depend on dict order.
        top = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.vocab]}
        keep = [s for s in keep if all(w in top for w in s.split())]
    if not keep:
        source = cfg.text_file or cfg.wordnet_dir
        raise DataError(source, f"no sentence has {cfg.min_words}-{cfg.max_words} words"
                                + (f" within the {cfg.vocab} most frequent words" if cfg.vocab else ""))
    return keep


def _digit_texts(cfg: SynthConfig) -> list[str]:
    total = sum(_sizes(cfg, (cfg.min_words + cfg.max_words) / 2).values())
    return digit_strings(math.ceil(total * 1.1) + 3, cfg.min_words, cfg.max_words, seed=cfg.seed)


def _word_sequences(cfg: SynthConfig, sentences: list[str]) -> list[str]:
    vocabulary = word_vocabulary(sentences, cfg.vocab, cfg.min_phones)
    # Lengths are uniform, so the mean is known before drawing; the margin covers the sizes that
    # subset_sizes later computes from the drawn sequences, so every utterance gets its own sequence.
    total = sum(_sizes(cfg, (cfg.min_words + cfg.max_words) / 2).values())
    return word_sequences(vocabulary, math.ceil(total * 1.1) + 3, cfg.min_words, cfg.max_words, cfg.seed)


# ----------------------------------------------------------------------------------------------
# Plan: speakers, sizes, sentences, utterances
# ----------------------------------------------------------------------------------------------


def subset_sizes(cfg: SynthConfig, sentences: list[str]) -> dict[str, int]:
    """Utterances per subset, from ``utterances`` or an estimate of ``hours``."""
    return _sizes(cfg, sum(len(s.split()) for s in sentences) / len(sentences))


def _sizes(cfg: SynthConfig, mean_words: float) -> dict[str, int]:
    total = cfg.utterances or math.ceil(cfg.hours * 3600 / (SECONDS_PER_UTT + SECONDS_PER_WORD * mean_words))
    dev = cfg.dev_utterances or round(total * cfg.dev_fraction)
    test = cfg.test_utterances or round(total * cfg.test_fraction)
    train = total - dev - test
    if train <= 0:
        raise DataError("corpus size", f"{total} utterances leave none for training after {dev} dev and {test} test")
    sizes = {cfg.train_subset: train, cfg.dev_subset: dev, cfg.test_subset: test}
    if cfg.voice_subset:
        sizes[cfg.voice_subset] = test
    return sizes


def plan_speakers(cfg: SynthConfig) -> list[Speaker]:
    """Speakers of the subsets, disjoint; the held-out flite voice speaks only in test (or its own subset)."""
    rng = random.Random(f"speakers:{cfg.seed}")
    n_dev = cfg.dev_speakers or max(2, cfg.speakers // 6)
    n_test = cfg.test_speakers or max(2, cfg.speakers // 6)
    n_train = cfg.speakers - n_dev - n_test
    if n_train < 2:
        raise DataError("speakers", f"{cfg.speakers} speakers leave {n_train} for training")
    flite_train = [v for v in FLITE_VOICES if v != cfg.heldout_voice]
    espeak = [(v, var) for v in ESPEAK_VOICES for var in ESPEAK_VARIANTS]
    rng.shuffle(espeak)
    speakers: list[Speaker] = []
    next_id = iter(range(100, 100 + 37 * (cfg.speakers + 1), 37))  # LibriSpeech-like sparse ids

    def flite(voice: str, subset: str) -> Speaker:
        female = FLITE_VOICES[voice] == "F"
        f0 = rng.randrange(165, 215, 5) if female else rng.randrange(90, 140, 5)
        return Speaker(next(next_id), FLITE_VOICES[voice], subset, "flite", voice, f0,
                       round(rng.uniform(0.85, 1.2), 2))

    def espeak_ng(subset: str) -> Speaker:
        voice, variant = espeak.pop()
        sex = "F" if variant.startswith("+f") else "M"
        return Speaker(next(next_id), sex, subset, "espeak-ng", voice + variant,
                       rng.randrange(25, 75), rng.randrange(140, 185, 5))

    # Alternate engines so every subset hears both; cycle flite voices so each recurs.
    for subset, count in ((cfg.train_subset, n_train), (cfg.dev_subset, n_dev), (cfg.test_subset, n_test)):
        for i in range(count):
            if subset == cfg.test_subset and i == 0 and not cfg.voice_subset:
                speakers.append(flite(cfg.heldout_voice, subset))
            elif i % 2 == 0:
                speakers.append(flite(flite_train[(i // 2) % len(flite_train)], subset))
            else:
                speakers.append(espeak_ng(subset))
    if cfg.voice_subset:
        speakers.append(flite(cfg.heldout_voice, cfg.voice_subset))
    return speakers


def split_sentences(cfg: SynthConfig, sentences: list[str], sizes: dict[str, int]) -> dict[str, list[str]]:
    """Disjoint sentence pools per subset; a pool smaller than its subset is reused in order."""
    pool = list(sentences)
    random.Random(f"sentences:{cfg.seed}").shuffle(pool)
    total = sum(sizes.values())
    if len(pool) < len(sizes):
        raise DataError("sentences", f"only {len(pool)} sentences; need at least one per subset")
    out: dict[str, list[str]] = {}
    start = 0
    # Test first, then dev: evaluation sets get distinct sentences; train takes what is left.
    for name in (cfg.test_subset, cfg.dev_subset) + cfg.subsets[3:]:
        n = min(sizes[name], max(1, len(pool) * sizes[name] // total))
        out[name] = pool[start:start + n]
        start += n
    out[cfg.train_subset] = pool[start:]
    return out


def plan_jobs(cfg: SynthConfig, speakers: list[Speaker], pools: dict[str, list[str]],
              sizes: dict[str, int]) -> list[UttJob]:
    """Every utterance of the corpus: subset, speaker, chapter, text and augmentation seed."""
    root = Path(cfg.out_dir)
    factors = speed_factors(cfg.speed_perturb)
    augmented = {getattr(cfg, f"{s.strip()}_subset") for s in cfg.augment_subsets.split(",") if s.strip()}
    jobs: list[UttJob] = []
    chapter_ids = iter(range(1000, 10 ** 6, 13))
    for subset in cfg.subsets:
        spk = [s for s in speakers if s.subset == subset]
        pool, n = pools[subset], sizes[subset]
        per_speaker = [[] for _ in spk]
        for i in range(n):
            j, k = i % len(spk), i // len(spk)
            # Deal sentences round-robin over speakers; a pool smaller than the subset is cycled whole
            # before any sentence repeats, and a repeat then goes to another speaker.
            per_speaker[j].append(pool[i % len(pool)] if len(pool) >= n or len(pool) % len(spk)
                                  else pool[(i + k) % len(pool)])
        for s, texts in zip(spk, per_speaker):
            for c0 in range(0, len(texts), UTTS_PER_CHAPTER):
                chapter = next(chapter_ids)
                folder = root / subset / str(s.id) / str(chapter)
                for k, text in enumerate(texts[c0:c0 + UTTS_PER_CHAPTER]):
                    uid = f"{s.id}-{chapter}-{k:04d}"
                    jobs.append(UttJob(uid, str(folder / f"{uid}.flac"), text, s,
                                       zlib.crc32(f"{cfg.seed}:{uid}".encode()), subset in augmented,
                                       cfg.noise_snr, cfg.reverb_prob, factors))
    return jobs


# ----------------------------------------------------------------------------------------------
# Audio: TTS, resampling, augmentation
# ----------------------------------------------------------------------------------------------


def check_tools(engines: set[str]) -> None:
    """Raise DataError naming the Debian packages to install if a TTS engine is missing."""
    missing = sorted(DEBIAN_PACKAGES[e] for e in engines if shutil.which(e) is None)
    if missing:
        pkgs = " ".join(missing)
        raise DataError(pkgs, f"text-to-speech not installed; install the Debian package(s) {pkgs}: "
                              f"sudo apt-get install {pkgs}")


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode 16-bit mono PCM WAV bytes from a TTS pipe.

    espeak-ng writes 0x7fffffff as the chunk sizes when streaming, so the data chunk is taken to
    run to the end of the bytes instead of trusting its size.

    Returns samples (n,) int16 and the sample rate.
    """
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("TTS output is not a WAV stream")
    pos = 12
    rate = 0
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag == b"fmt ":
            channels = int.from_bytes(data[pos + 10:pos + 12], "little")
            rate = int.from_bytes(data[pos + 12:pos + 16], "little")
            bits = int.from_bytes(data[pos + 22:pos + 24], "little")
            if channels != 1 or bits != 16:
                raise ValueError(f"TTS output is {channels} channels, {bits} bits; expected mono 16-bit")
        elif tag == b"data":
            body = data[pos + 8:]
            body = body[: len(body) - len(body) % 2]
            return np.frombuffer(body, dtype="<i2"), rate
        pos += 8 + size + size % 2
    raise ValueError("TTS output has no data chunk")


def tts(text: str, speaker: Speaker) -> tuple[np.ndarray, int]:
    """Speak ``text`` with ``speaker``'s voice, piping the WAV through memory.

    Returns samples (n,) int16 at the engine's rate (flite 16 kHz, espeak-ng 22050 Hz).
    """
    # Lower case: both engines spell out some all-capital words as acronyms.
    text = text.lower()
    if speaker.engine == "flite":
        cmd = ["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={speaker.rate:g}",
               "--setf", f"int_f0_target_mean={speaker.pitch}", "-t", text, "-o", "/dev/stdout"]
        stdin = None
    else:
        cmd = ["espeak-ng", "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(int(speaker.rate)),
               "--stdout"]
        stdin = text.encode()
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{speaker.engine} exited with {proc.returncode}: {err[-1] if err else ''}")
    samples, rate = parse_wav(proc.stdout)
    if samples.size == 0:
        raise RuntimeError(f"{speaker.engine} produced no audio")
    return samples, rate


def resample(wave: np.ndarray, rate_in: float, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample (n,) float32 from ``rate_in`` to ``rate_out`` (soxr, deterministic)."""
    if rate_in == rate_out:
        return wave
    import soxr

    return soxr.resample(wave, rate_in, rate_out, quality="HQ").astype(np.float32)


def synthetic_rir(rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A room impulse response: a direct path then exponentially decaying noise. Shape (n,)."""
    rt60 = rng.uniform(0.2, 0.7)
    t = np.arange(int(rt60 * rate)) / rate
    tail = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    delay = int(rng.uniform(0.002, 0.01) * rate)  # first reflection after the direct sound
    rir = np.zeros(t.size + delay, dtype=np.float64)
    rir[0] = 1.0
    rir[delay:] += 0.3 * tail / max(np.abs(tail).max(), 1e-9)
    return (rir / np.sqrt(np.sum(rir ** 2))).astype(np.float32)


def _fft_convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # numpy rather than scipy.signal, whose import alone takes seconds on a busy machine.
    n = a.size + b.size - 1
    nfft = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, nfft) * np.fft.rfft(b, nfft), nfft)[:n].astype(np.float32)


def augment(wave: np.ndarray, job: UttJob, rng: np.random.Generator) -> np.ndarray:
    """Reverberation then additive white noise at ``job.noise_snr`` dB. (n,) float32 -> (n,)."""
    power = float(np.mean(wave ** 2)) + 1e-12
    if job.reverb_prob > 0 and rng.random() < job.reverb_prob:
        wet = _fft_convolve(wave, synthetic_rir(rng))[: wave.size]
        wave = (wet * np.sqrt(power / (np.mean(wet ** 2) + 1e-12))).astype(np.float32)
    if job.noise_snr is not None:
        noise = rng.standard_normal(wave.size).astype(np.float32)
        wave = wave + noise * np.float32(np.sqrt(power / 10 ** (job.noise_snr / 10)))
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
    wave = resample(wave, rate * factor)
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


def plan_corpus(cfg: SynthConfig) -> tuple[list[Speaker], list[UttJob]]:
    """The whole corpus as a plan (speakers and utterances), a pure function of ``cfg``."""
    speakers = plan_speakers(cfg)
    sentences = load_sentences(cfg)
    sizes = subset_sizes(cfg, sentences)
    return speakers, plan_jobs(cfg, speakers, split_sentences(cfg, sentences, sizes), sizes)


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
