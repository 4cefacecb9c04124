"""The synthetic LibriSpeech-layout corpus: layout file by file, disjointness, determinism, resume."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.data.importers import import_librispeech
from asr.data.synth import (
    FLITE_VOICES,
    Speaker,
    SynthConfig,
    UttJob,
    _run_job,
    augment,
    load_sentences,
    plan_speakers,
    render,
    subset_sizes,
    synthesize_corpus,
)
from asr.data.validate import ValidateConfig, validate_manifest
from asr.errors import DataError

pytestmark = pytest.mark.skipif(shutil.which("flite") is None or shutil.which("espeak-ng") is None,
                                reason="flite and espeak-ng are not installed")

SENTENCES = ["The cat sat on the mat.", "A dog ran home", "It rained 3 days", "We like green tea",
             "Birds sing at dawn", "She reads a book", "Open the door", "The sun is hot",
             "He has 2 cars", "Cold water helps", "They walk to school", "Time flies fast",
             "Leaves fall in autumn", "Fish swim deep"]
SUBSETS = ("train-clean", "dev-clean", "test-clean")


def tiny_config(root: Path, text_file: Path, **kw) -> SynthConfig:
    # 6 speakers (2 per subset) x 2 utterances each.
    base = dict(out_dir=str(root), utterances=12, dev_utterances=4, test_utterances=4, speakers=6,
                text_file=str(text_file), seed=3, nj=2)
    return SynthConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, text_file):
    root = tmp_path_factory.mktemp("corpus")
    cfg = tiny_config(root, text_file)
    return cfg, synthesize_corpus(cfg)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _speakers_txt(root: Path) -> dict[str, tuple[str, str, float, str]]:
    rows = {}
    for line in (root / "SPEAKERS.TXT").read_text().splitlines():
        if line.startswith(";"):
            continue
        spk, sex, subset, minutes, name = (f.strip() for f in line.split("|"))
        rows[spk] = (sex, subset, float(minutes), name)
    return rows


def test_layout_file_by_file(corpus):
    cfg, report = corpus
    root = Path(cfg.out_dir)
    assert not report.failures and report.synthesized == 12
    speakers = _speakers_txt(root)
    assert "\n;ID  |SEX| SUBSET           |MINUTES| NAME\n" in (root / "SPEAKERS.TXT").read_text()
    seconds: dict[str, float] = {}
    for subset in SUBSETS:
        trans_files = sorted((root / subset).glob("*/*/*.trans.txt"))
        assert trans_files
        for trans in trans_files:
            spk, chapter = trans.parent.parent.name, trans.parent.name
            assert spk.isdigit() and chapter.isdigit() and trans.name == f"{spk}-{chapter}.trans.txt"
            assert speakers[spk][1] == subset
            lines = trans.read_text().splitlines()
            ids = [line.split(" ", 1)[0] for line in lines]
            flacs = sorted(p.stem for p in trans.parent.glob("*.flac"))
            assert ids == flacs  # every transcript line has its audio and vice versa
            for line in lines:
                uid, text = line.split(" ", 1)
                assert re.fullmatch(rf"{spk}-{chapter}-\d{{4}}", uid)
                assert re.fullmatch(r"[A-Z' ]+", text) and "  " not in text
                info = sf.info(trans.parent / f"{uid}.flac")
                assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
                assert 0.3 < info.duration < 10
                seconds[spk] = seconds.get(spk, 0.0) + info.duration
    for spk, (sex, _, minutes, _) in speakers.items():
        assert sex in ("F", "M")
        assert minutes == pytest.approx(seconds[spk] / 60, abs=0.006)
    assert sum(report.utterances.values()) == 12
    assert report.utterances == {"train-clean": 4, "dev-clean": 4, "test-clean": 4}


def test_speakers_and_sentences_disjoint(corpus):
    cfg, _ = corpus
    root = Path(cfg.out_dir)
    speakers, texts = {}, {}
    for subset in SUBSETS:
        speakers[subset] = {p.name for p in (root / subset).iterdir()}
        texts[subset] = {line.split(" ", 1)[1] for t in (root / subset).glob("*/*/*.trans.txt")
                         for line in t.read_text().splitlines()}
    for a, b in (("train-clean", "dev-clean"), ("train-clean", "test-clean"), ("dev-clean", "test-clean")):
        assert not speakers[a] & speakers[b]
        assert not texts[a] & texts[b]
    names = _speakers_txt(root)
    heldout = f"flite {cfg.heldout_voice} "
    assert any(names[s][3].startswith(heldout) for s in speakers["test-clean"])
    assert not any(names[s][3].startswith(heldout) for s in speakers["train-clean"])


def test_the_heldout_voice_can_have_its_own_subset(tmp_path, text_file, capsys):
    out = tmp_path / "c"
    assert main(["corpus", "synth", "--out", str(out), "--text", str(text_file), "--utterances", "12",
                 "--dev-utterances", "4", "--test-utterances", "4", "--speakers", "6",
                 "--voice-subset", "test-voice", "--seed", "3"]) == 0
    assert "test-voice: 4 utterances" in capsys.readouterr().out
    names = _speakers_txt(out)
    voice = {p.name: names[p.name][3] for p in (out / "test-voice").iterdir()}
    # The held-out voice speaks the fourth subset alone; test keeps its speakers, of training voices.
    assert len(voice) == 1 and all(n.startswith("flite rms ") for n in voice.values())
    for subset in SUBSETS:
        assert not any(names[p.name][3].startswith("flite rms ") for p in (out / subset).iterdir())
    assert len(list((out / "test-clean").iterdir())) == 2
    texts = {subset: {line.split(" ", 1)[1] for t in (out / subset).glob("*/*/*.trans.txt")
                      for line in t.read_text().splitlines()} for subset in SUBSETS + ("test-voice",)}
    assert len(set.union(*texts.values())) == sum(map(len, texts.values()))  # disjoint sentences
    imported = import_librispeech(out / "test-voice")
    assert len(imported.utterances) == 4 and not imported.failures


def test_same_seed_same_bytes_and_resume(corpus, tmp_path, text_file):
    cfg, _ = corpus
    first = _files(Path(cfg.out_dir))
    again = tiny_config(tmp_path, text_file, nj=1)  # serial: parallelism must not change the output
    synthesize_corpus(again)
    assert _files(tmp_path) == first
    victim = next(tmp_path.rglob("*.flac"))
    victim.unlink()
    report = synthesize_corpus(again)
    assert (report.synthesized, report.skipped_existing) == (1, 11)
    assert _files(tmp_path) == first


def test_resume_refuses_other_settings(corpus, text_file):
    cfg, _ = corpus
    with pytest.raises(DataError, match="other settings"):
        synthesize_corpus(dataclasses.replace(cfg, seed=cfg.seed + 1))


def test_import_and_validate_the_corpus(corpus):
    cfg, _ = corpus
    root = Path(cfg.out_dir)
    for subset in SUBSETS:
        result = import_librispeech(root, subset)
        assert not result.failures
        flacs = sorted(root.joinpath(subset).rglob("*.flac"))
        assert sorted(u.id for u in result.utterances) == [p.stem for p in flacs]
        for u in result.utterances:
            assert u.speaker == u.id.split("-")[0]
            assert u.duration == pytest.approx(sf.info(u.audio).duration)
        manifest = root / f"{subset}.jsonl"
        from asr.data.manifest import write_manifest

        write_manifest(manifest, result.utterances)
        report = validate_manifest(ValidateConfig(str(manifest)))
        assert len(report.valid) == len(flacs) and not report.rejects


def test_different_seed_changes_the_plan(tmp_path, text_file):
    a = plan_speakers(tiny_config(tmp_path, text_file, speakers=24))
    b = plan_speakers(tiny_config(tmp_path, text_file, speakers=24, seed=4))
    assert [s.name for s in a] != [s.name for s in b]
    assert len({s.id for s in a}) == 24
    test_voices = {s.voice for s in a if s.subset == "test-clean" and s.engine == "flite"}
    train_voices = {s.voice for s in a if s.subset == "train-clean" and s.engine == "flite"}
    assert "rms" in test_voices and "rms" not in train_voices and train_voices <= set(FLITE_VOICES)


def test_sentence_filters(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("the cat\nthe dog\nthe cat sat\na zebra\nthe cat sat on a very long mat today\n\n")
    cfg = SynthConfig(str(tmp_path), utterances=3, text_file=str(path), speakers=6)
    assert load_sentences(dataclasses.replace(cfg, min_words=2, max_words=3)) == \
        ["A ZEBRA", "THE CAT", "THE CAT SAT", "THE DOG"]
    assert load_sentences(dataclasses.replace(cfg, min_words=3, max_words=3)) == ["THE CAT SAT"]
    # Among 2-3 word sentences THE (3) and CAT (2) are the two most frequent words.
    assert load_sentences(dataclasses.replace(cfg, min_words=2, max_words=3, vocab=2)) == ["THE CAT"]
    with pytest.raises(DataError, match="no sentence"):
        load_sentences(dataclasses.replace(cfg, min_words=20, max_words=30))


def test_hours_sets_the_size(tmp_path, text_file):
    cfg = SynthConfig(str(tmp_path), hours=0.1, text_file=str(text_file), speakers=6)
    sizes = subset_sizes(cfg, load_sentences(cfg))
    bigger = subset_sizes(dataclasses.replace(cfg, hours=0.2), load_sentences(cfg))
    assert sum(bigger.values()) > sum(sizes.values()) > 0
    assert sizes["dev-clean"] == round(sum(sizes.values()) * cfg.dev_fraction)


def test_missing_tts_names_the_packages(tmp_path, text_file, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no flite, no espeak-ng
    with pytest.raises(DataError, match=r"apt-get install espeak-ng flite"):
        synthesize_corpus(tiny_config(tmp_path / "c", text_file))


def _job(speed=(), augment_on=False, snr=None, reverb=0.0) -> UttJob:
    spk = Speaker(100, "F", "train-clean", "espeak-ng", "en-us+f2", 50, 160)
    return UttJob("100-1000-0000", "unused.flac", "THE CAT SAT ON THE MAT", spk, 7, augment_on, snr, reverb, speed)


def test_speed_perturbation_changes_length():
    clean = render(_job())
    fast = render(_job(speed=(1.25,), augment_on=True))
    assert fast.size / clean.size == pytest.approx(1 / 1.25, rel=0.01)
    assert np.array_equal(fast, render(_job(speed=(1.25,), augment_on=True)))  # deterministic
    noisy = render(_job(speed=(0.9, 1.1), augment_on=True, snr=15.0, reverb=1.0))
    assert np.array_equal(noisy, render(_job(speed=(0.9, 1.1), augment_on=True, snr=15.0, reverb=1.0)))
    assert noisy.size != clean.size


def test_noise_is_added_at_the_requested_snr():
    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    rng = np.random.default_rng(0)
    noisy = augment(wave, _job(snr=10.0, augment_on=True), rng)
    snr = 10 * np.log10(np.mean(wave ** 2) / np.mean((noisy - wave) ** 2))
    assert snr == pytest.approx(10.0, abs=0.3)


def test_reverb_keeps_length_and_power_and_smears():
    wave = np.zeros(16000, dtype=np.float32)
    wave[1000:1160] = 0.5  # a 10 ms burst
    wet = augment(wave, _job(reverb=1.0, augment_on=True), np.random.default_rng(1))
    assert wet.shape == wave.shape
    assert np.mean(wet ** 2) == pytest.approx(np.mean(wave ** 2), rel=1e-3)
    assert np.abs(wet[1400:]).max() > 0.01  # the room's tail outlasts the burst


def test_tts_failure_is_reported_not_raised(tmp_path):
    bad = dataclasses.replace(_job(), path=str(tmp_path / "x.flac"),
                              speaker=Speaker(1, "M", "train-clean", "espeak-ng", "nosuch", 50, 160))
    uid, seconds, error = _run_job(bad)
    assert (uid, seconds) == ("100-1000-0000", 0.0) and "espeak-ng exited" in error
    assert not (tmp_path / "x.flac").exists()


def test_cli_synth_with_augmentation(tmp_path, text_file, capsys):
    out = tmp_path / "corpus"
    status = main(["corpus", "synth", "--out", str(out), "--utterances", "6", "--dev-utterances", "2",
                   "--test-utterances", "2", "--speakers", "6", "--text", str(text_file), "--noise-snr", "20",
                   "--reverb-prob", "0.5", "--speed-perturb", "0.9,1.1", "--subsets", "tr,dv,ts", "--nj", "2"])
    assert status == 0
    assert "s audio per wall-second" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["dv", "tr", "ts"]
    assert sum(len(import_librispeech(out, s).utterances) for s in ("tr", "dv", "ts")) == 6
    assert main(["corpus", "synth", "--out", str(tmp_path / "c2"), "--speakers", "6", "--utterances", "6",
                 "--text", str(text_file), "--augment-subsets", "train,eval"]) == 2


# -- more voices (issue 14): every flite voice but the held-out one, espeak-ng variants, formant scaling --


def test_every_flite_voice_but_the_heldout_one_trains(tmp_path, text_file):
    from asr.data.tts import ESPEAK_VARIANTS

    cfg = SynthConfig(str(tmp_path), utterances=200, text_file=str(text_file), speakers=40, voice_subset="tv",
                      wide_voices=True, formant_spread=0.15)
    speakers = plan_speakers(cfg)
    train = [s for s in speakers if s.subset == cfg.train_subset]
    assert {s.voice for s in train if s.engine == "flite"} == set(FLITE_VOICES) - {"rms"}
    assert {s.voice for s in speakers if s.subset == "tv"} == {"rms"}
    # the held-out voice is never warped; the others are, within the spread
    assert all(s.formant == 1.0 for s in speakers if s.voice == "rms")
    warps = [s.formant for s in train]
    assert len(set(warps)) > 10 and all(1 / 1.15 - 1e-3 <= k <= 1.15 + 1e-3 for k in warps)
    variants = {s.voice.split("+")[1] if "+" in s.voice else "" for s in train if s.engine == "espeak-ng"}
    assert variants <= set(ESPEAK_VARIANTS) and len(variants) > 10
    assert "whisper" not in ESPEAK_VARIANTS and "festival" not in " ".join(s.name for s in speakers)


def test_formant_scaling_moves_the_spectrum_and_keeps_the_duration():
    base = Speaker(100, "M", "train-clean", "flite", "awb", 110, 1.0)
    plain = render(UttJob("100-1-0000", "x.flac", "SEVEN SEVEN SEVEN", base, 1, False, None, 0.0, ()))
    high = render(UttJob("100-1-0000", "x.flac", "SEVEN SEVEN SEVEN",
                         dataclasses.replace(base, formant=1.15), 1, False, None, 0.0, ()))
    assert high.size / plain.size == pytest.approx(1.0, abs=0.08)

    def centroid(x):
        spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
        return float((np.arange(spec.size) * spec).sum() / spec.sum()) / x.size * 16000

    assert centroid(high) / centroid(plain) == pytest.approx(1.15, abs=0.08)


def test_cli_reports_per_voice_counts(tmp_path, text_file, capsys):
    out = tmp_path / "c"
    assert main(["corpus", "synth", "--out", str(out), "--text", str(text_file), "--utterances", "12",
                 "--speakers", "6", "--formant-spread", "0.1", "--wide-voices"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " voices: " in ln]
    assert len(lines) == 3
    train = next(ln for ln in lines if "train-clean voices" in ln)
    counts = [int(n) for n in re.findall(r" (\d+)(?:,| \(|$)", train.split("voices: ")[1])]
    assert "flite " in train and "espeak-ng " in train and sum(counts) == 12 - 2 * round(12 * 0.1)
