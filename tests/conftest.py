"""Shared fixtures: a tiny flite-synthesized corpus and a model really trained on it.

``tiny_corpus``   ~20 utterances of 1-3 words from an 8-word vocabulary (16 kHz WAV), a manifest and a small
                  unigram tokenizer; skipped when flite is not installed.
``tiny_model_dir`` a model folder (asr.checkpoint layout) trained on ``tiny_corpus`` until its greedy
                  training WER is 0 (train.target_wer), at most 400 updates; built once per session
                  (about 150-250 updates: 40-100 s on 2 busy cores).
``tiny_config``   factory for the tiny experiment config those use, for tests that train their own.

The Debian packages the synthetic corpora need (flite, espeak-ng, wordnet-base) are checked once per
session: without them the tests that need them skip locally, but with ``CI=true`` the run fails at once
and prints the install line, so a CI run cannot pass with those tests skipped. Hypothesis runs
derandomized in CI (profile ``ci``); scripts/fuzz.py is for random hunts.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Debian package -> the file or program the tests use from it.
DEBIAN_NEEDS = {"flite": ("flite", "t2p"), "espeak-ng": ("espeak-ng",), "wordnet-base": ("/usr/share/wordnet/data.noun",)}

settings.register_profile("ci", derandomize=True, print_blob=True)
if IN_CI:
    settings.load_profile("ci")

WORDS = ["yes", "no", "up", "down", "left", "right", "stop", "go"]
NUM_UTTS = 20
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class TinyCorpus:
    """Files of the tiny corpus; ``utts`` are ``asr.data.manifest.Utterance``."""

    root: Path
    manifest: Path
    tokenizer_path: Path
    texts: tuple[str, ...]

    @property
    def utts(self):
        from asr.data.manifest import read_manifest

        return read_manifest(self.manifest)

    @property
    def tokenizer(self):
        from asr.tokenizer import Tokenizer

        return Tokenizer.load(self.tokenizer_path)


def missing_debian_packages() -> list[str]:
    """The packages of DEBIAN_NEEDS with a program not on PATH or a file not present."""
    def present(need: str) -> bool:
        return Path(need).exists() if need.startswith("/") else shutil.which(need) is not None

    return [pkg for pkg, needs in DEBIAN_NEEDS.items() if not all(present(n) for n in needs)]


def pytest_sessionstart(session):
    missing = missing_debian_packages()
    if IN_CI and missing:
        pytest.exit(f"CI=true but Debian package(s) {' '.join(missing)} missing; the tests that need them would "
                    f"only skip. Install: sudo apt-get install -y {' '.join(missing)}  (or run scripts/setup.sh "
                    f"as root)", returncode=1)


def shared_data(name: str) -> Path | None:
    """The shared data set ``name`` beside the checkout, or None when absent (tests then skip).

    ``$ASR_SHARED_DIR/data/name``, else the nearest ``<ancestor>/shared/data/name`` above the repository
    (``../shared`` for a clone; a worktree may sit deeper), as recipes/common.sh looks it up.
    """
    if os.environ.get("ASR_SHARED_DIR"):
        candidates = [Path(os.environ["ASR_SHARED_DIR"]) / "data" / name]
    else:
        candidates = [a / "shared" / "data" / name for a in REPO.parents]
    return next((c for c in candidates if c.is_dir()), None)


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the benchmark scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def word_edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists, counted here independently of jiwer."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def decode_with_a_broken_file(model_dir, manifest, out: Path, *flags: str) -> tuple[list[dict], dict]:
    """``asr decode`` of ``manifest``, in which one utterance is the unreadable ``broken.wav``: checks that it
    ends partial with that file listed once, and returns (hyps.jsonl rows, decode.json)."""
    import json

    from asr.cli import EXIT_PARTIAL, main

    status = main(["decode", "--model", str(model_dir), "--manifest", str(manifest), "--out-dir", str(out),
                   "--beam", "4", "--no-progress", *flags])
    assert status == EXIT_PARTIAL
    failures = (out / "failures.tsv").read_text()
    assert failures.startswith("broken\t") and failures.count("broken\t") == 1
    hyps = [json.loads(line) for line in (out / "hyps.jsonl").read_text().splitlines()]
    return hyps, json.loads((out / "decode.json").read_text())


def _tiny_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    texts = list(WORDS)  # every word at least once on its own
    while len(texts) < n:
        texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 3))))
    return texts[:n]


def _synthesize(text: str, path: Path) -> float:
    """flite -> 16 kHz mono WAV at ``path``; returns the duration in seconds."""
    import numpy as np
    import soundfile as sf

    raw = path.with_suffix(".raw.wav")
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(raw)], check=True, capture_output=True)
    wave, sr = sf.read(raw, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != SAMPLE_RATE:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, SAMPLE_RATE)
        wave = resample_poly(wave, SAMPLE_RATE // g, sr // g).astype(np.float32)
    sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
    raw.unlink()
    return len(wave) / SAMPLE_RATE


def make_tiny_corpus(root: Path, n: int = NUM_UTTS) -> TinyCorpus:
    """Synthesize the corpus into ``root`` (wav/, train.jsonl, tokenizer.model)."""
    from asr.data.manifest import Utterance, write_manifest
    from asr.tokenizer import Tokenizer

    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite)")
    texts = _tiny_texts(n)
    utts = []
    for i, text in enumerate(texts):
        wav = root / "wav" / f"utt{i:03d}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        duration = _synthesize(text, wav)
        utts.append(Utterance(f"utt{i:03d}", str(wav), round(duration, 4), text.upper(), "slt"))
    manifest = root / "train.jsonl"
    write_manifest(manifest, utts)
    tok = Tokenizer.train([u.text for u in utts], root / "tokenizer", vocab_size=30, model_type="unigram")
    return TinyCorpus(root, manifest, tok.model_path, tuple(u.text for u in utts))


def tiny_experiment_config(**train):
    """The small, fast experiment config of the tiny fixtures; ``train`` overrides train-section keys."""
    from asr.config import ExperimentConfig

    sections = {
        "features": {"n_mels": 40},
        "model": {
            "listener_hidden": 64, "listener_layers": 1, "pyramid_layers": 2, "dropout": 0.0,
            "attention": "location", "attention_dim": 64, "location_channels": 4, "location_kernel": 11,
            "embed_dim": 32, "decoder_hidden": 96, "decoder_dropout": 0.0, "ctc_weight": 0.3,
            "label_smoothing": 0.0,
        },
        "specaug": {"policy": "none"},
        "train": {
            "seed": 0, "lr": 4e-3, "warmup_steps": 15, "lr_schedule": "constant", "max_epochs": 200,
            "max_steps": 200, "max_duration": 6.0, "num_buckets": 2, "grad_clip": 5.0, "num_workers": 0,
            "checkpoint_every_steps": 0, "keep_best": 2, "average_n": 1, "dev_wer_utts": 4,
            "log_every": 20, "plots": False, "tensorboard": False, "num_threads": 1, **train,
        },
    }
    return ExperimentConfig.from_sections(sections, "tiny")


@pytest.fixture(scope="session", autouse=True)
def cpu_threads():
    """One intra-op thread: the 2 cores are shared with other test runs, and oversubscribed OpenMP
    threads spin-wait (a tiny training step measured 0.4 s with 1 thread, 3-36 s with 2 under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> TinyCorpus:
    """~20 flite utterances (1-3 words, 8-word vocabulary), manifest and unigram tokenizer."""
    return make_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture
def tiny_config():
    """Factory: ``tiny_config(**train_overrides) -> ExperimentConfig``."""
    return tiny_experiment_config


@pytest.fixture(scope="session")
def tiny_training(tiny_corpus, tmp_path_factory):
    """``(TrainResult, exp_dir)`` of the session's tiny training run (train = dev = tiny_corpus)."""
    from asr.train import train

    exp_dir = tmp_path_factory.mktemp("tiny_exp")
    # Validate on the training set itself every 20 updates and stop as soon as its greedy WER is 0.
    cfg = tiny_experiment_config(max_steps=400, valid_every_steps=20, valid_every_epochs=0, target_wer=0.0,
                                 dev_wer_utts=NUM_UTTS)
    result = train(cfg, tiny_corpus.manifest, tiny_corpus.manifest, tiny_corpus.tokenizer_path, exp_dir)
    return result, exp_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_training) -> Path:
    """A model folder (model.pt, config.yaml, tokenizer.model) trained on tiny_corpus to ~0 greedy WER."""
    return tiny_training[0].final_dir
