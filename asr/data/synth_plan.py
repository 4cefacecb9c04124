"""Planning of the synthetic corpus: its text and its speakers, and the list of utterances to speak.

Everything is a pure function of the :class:`asr.data.synth.SynthConfig`: the speaker plan, the
sentence split and each utterance's augmentation seed (from its id), so a re-run plans the same corpus.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from asr.data.digits import digit_strings
from asr.data.tts import ESPEAK_VARIANTS, ESPEAK_VOICES, FLITE_VOICES, Speaker
from asr.data.wordseq import word_sequences, word_vocabulary
from asr.errors import DataError
from asr.text import normalize_librispeech

WORDNET_DIR = "/usr/share/wordnet"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
# Each espeak-ng speaker takes a distinct voice+variant; flite speakers take every other slot.
MAX_SPEAKERS = 2 * len(ESPEAK_VOICES) * len(ESPEAK_VARIANTS)
UTTS_PER_CHAPTER = 50
# Seconds of audio per utterance ~ 0.58 + 0.22 * words (least-squares fit over 100 utterances of the
# 24 default voices); used only to turn `hours` into an utterance count before synthesis.
SECONDS_PER_WORD = 0.22
SECONDS_PER_UTT = 0.58

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
    # Wider pitch and rate ranges for the training voices (flite F0 75-165 Hz male, 150-245 Hz female,
    # stretch 0.8-1.3; espeak-ng pitch 5-95, 125-200 wpm) instead of 90-140 / 165-215 Hz, 0.85-1.2,
    # pitch 25-75, 140-185 wpm. The held-out voice keeps the narrow ranges.
    wide_voices: bool = False
    # > 0: every speaker but the held-out voice scales its frequencies by a factor drawn log-uniformly
    # from [1 / (1 + s), 1 + s] (a shorter or longer vocal tract); 0 = voices as the engines speak them
    formant_spread: float = 0.0
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
        if not 0 <= self.formant_spread <= 0.5:
            raise ValueError(f"formant_spread must be in [0, 0.5], got {self.formant_spread}")
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
    wide = cfg.wide_voices
    spread = cfg.formant_spread

    def formant() -> float:
        # log-uniform, so that lengthening and shortening the vocal tract are equally likely
        return round(math.exp(rng.uniform(-math.log1p(spread), math.log1p(spread))), 3) if spread else 1.0

    def flite(voice: str, subset: str, heldout: bool = False) -> Speaker:
        female = FLITE_VOICES[voice] == "F"
        if wide and not heldout:
            f0 = rng.randrange(150, 245, 5) if female else rng.randrange(75, 165, 5)
            rate = round(rng.uniform(0.8, 1.3), 2)
        else:
            f0 = rng.randrange(165, 215, 5) if female else rng.randrange(90, 140, 5)
            rate = round(rng.uniform(0.85, 1.2), 2)
        # The held-out voice stays as the engine speaks it: it measures a voice never heard, not a warp.
        return Speaker(next(next_id), FLITE_VOICES[voice], subset, "flite", voice, f0, rate,
                       1.0 if heldout else formant())

    def espeak_ng(subset: str) -> Speaker:
        voice, variant = espeak.pop()
        pitch = rng.randrange(5, 95) if wide else rng.randrange(25, 75)
        rate = rng.randrange(125, 200, 5) if wide else rng.randrange(140, 185, 5)
        return Speaker(next(next_id), ESPEAK_VARIANTS[variant], subset, "espeak-ng",
                       voice + (f"+{variant}" if variant else ""), pitch, rate, formant())

    # Alternate engines so every subset hears both; cycle flite voices so each recurs.
    for subset, count in ((cfg.train_subset, n_train), (cfg.dev_subset, n_dev), (cfg.test_subset, n_test)):
        for i in range(count):
            if subset == cfg.test_subset and i == 0 and not cfg.voice_subset:
                speakers.append(flite(cfg.heldout_voice, subset, heldout=True))
            elif i % 2 == 0:
                speakers.append(flite(flite_train[(i // 2) % len(flite_train)], subset))
            else:
                speakers.append(espeak_ng(subset))
    if cfg.voice_subset:
        speakers.append(flite(cfg.heldout_voice, cfg.voice_subset, heldout=True))
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



def plan_corpus(cfg: SynthConfig) -> tuple[list[Speaker], list[UttJob]]:
    """The whole corpus as a plan (speakers and utterances), a pure function of ``cfg``."""
    speakers = plan_speakers(cfg)
    sentences = load_sentences(cfg)
    sizes = subset_sizes(cfg, sentences)
    return speakers, plan_jobs(cfg, speakers, split_sentences(cfg, sentences, sizes), sizes)
