"""End to end: `asr decode`, `asr score` and `asr train-lm` on the session's really trained tiny model."""

from __future__ import annotations

import json

import pytest

from asr.cli import EXIT_PARTIAL, EXIT_USER_ERROR, main
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def manifest_with_bad_audio(tiny_corpus, tmp_path_factory):
    """Seven utterances of the tiny corpus with an unreadable file in the middle."""
    root = tmp_path_factory.mktemp("decode_cli")
    bad = root / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    utts = read_manifest(tiny_corpus.manifest)[:6]
    utts.insert(3, Utterance("broken", str(bad), 1.0, "YES", "slt"))
    path = root / "test.jsonl"
    write_manifest(path, utts)
    return path


def _decode(model_dir, manifest, out, *flags) -> int:
    return main(["decode", "--model", str(model_dir), "--manifest", str(manifest), "--out-dir", str(out),
                 "--beam", "4", "--batch-size", "3", "--no-progress", *flags])


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def decoded(tiny_model_dir, manifest_with_bad_audio, tmp_path_factory):
    out = tmp_path_factory.mktemp("decoded")
    status = _decode(tiny_model_dir, manifest_with_bad_audio, out, "--nbest", "2")
    return status, out


def test_decode_skips_bad_audio_and_reports_it(decoded, manifest_with_bad_audio, tiny_model_dir):
    status, out = decoded
    assert status == EXIT_PARTIAL
    failures = (out / "failures.tsv").read_text().splitlines()
    assert len(failures) == 1 and failures[0].startswith("broken\t") and "broken.wav" in failures[0]
    hyps = _read_jsonl(out / "hyps.jsonl")
    expected = [u.id for u in read_manifest(manifest_with_bad_audio) if u.id != "broken"]
    assert [h["id"] for h in hyps] == expected  # manifest order, not batching order
    tok = Tokenizer.load(tiny_model_dir / "tokenizer.model")
    for h in hyps:
        assert h["text"] == tok.decode(h["tokens"])
        assert 1 <= len(h["nbest"]) <= 2 and h["nbest"][0]["tokens"] == h["tokens"]
        assert set(h["guards"]) >= {"ngram_repeat", "attention_stall", "max_len"}
    kaldi = (out / "text").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in kaldi] == expected
    info = json.loads((out / "decode.json").read_text())
    assert info["num_failed"] == 1 and info["options"]["beam_size"] == 4


def test_two_jobs_give_the_same_output_as_one(decoded, tiny_model_dir, manifest_with_bad_audio, tmp_path):
    _, out1 = decoded
    assert _decode(tiny_model_dir, manifest_with_bad_audio, tmp_path, "--nbest", "2", "--nj", "2") == EXIT_PARTIAL
    assert (tmp_path / "text").read_text() == (out1 / "text").read_text()
    one, two = _read_jsonl(out1 / "hyps.jsonl"), _read_jsonl(tmp_path / "hyps.jsonl")
    assert [h["tokens"] for h in two] == [h["tokens"] for h in one]
    assert [h["score"] for h in two] == pytest.approx([h["score"] for h in one], abs=1e-3)
    assert (tmp_path / "failures.tsv").read_text() == (out1 / "failures.tsv").read_text()


def test_score_the_decoded_output(decoded, manifest_with_bad_audio, tmp_path):
    _, out = decoded
    assert main(["score", "--ref", str(manifest_with_bad_audio), "--hyp", str(out / "hyps.jsonl"),
                 "--out-dir", str(tmp_path), "--name", "tiny"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_utts"] == 7 and results["missing"] == ["broken"]
    # The failed utterance counts as all deletions, so WER includes at least its one word.
    assert results["deletions"] >= 1 and 0 < results["wer"] <= 1.5
    assert (tmp_path / "summary.md").read_text().startswith("| tiny | 7 |")


def test_train_lm_then_decode_with_it(tiny_corpus, tiny_model_dir, manifest_with_bad_audio, tmp_path):
    lm_dir = tmp_path / "lm"
    assert main(["train-lm", "--manifest", str(tiny_corpus.manifest), "--tokenizer",
                 str(tiny_model_dir / "tokenizer.model"), "--out", str(lm_dir), "-o", "lm.epochs=2",
                 "-o", "lm.hidden=32", "-o", "lm.embed_dim=16"]) == 0
    assert (lm_dir / "model.pt.sha256").exists() and (lm_dir / "tokenizer.model").exists()
    out = tmp_path / "dec"
    assert _decode(tiny_model_dir, manifest_with_bad_audio, out, "--lm", str(lm_dir), "--lm-weight", "0.5") == EXIT_PARTIAL
    hyps = _read_jsonl(out / "hyps.jsonl")
    assert all(h["lm_score"] < 0 for h in hyps)


def test_user_errors_are_one_line(tmp_path, manifest_with_bad_audio, capsys):
    assert _decode(tmp_path / "no_model", manifest_with_bad_audio, tmp_path / "o") == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("asr: error:") and "no_model" in err and len(err.splitlines()) == 1
    # The same error raised inside a worker process still reaches the user as one line.
    assert _decode(tmp_path / "no_model", manifest_with_bad_audio, tmp_path / "o", "--nj", "2") == EXIT_USER_ERROR
    assert "no_model: model folder not found" in capsys.readouterr().err
    assert main(["decode", "--model", "x", "--manifest", str(manifest_with_bad_audio), "--out-dir", "o",
                 "-o", "decode.beam_size=0"]) == EXIT_USER_ERROR


@pytest.fixture(scope="module")
def unsure_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with seeded noise on its speller: its CTC head still hears the words but its
    attention decoder errs, so greedy search and a CTC-scored beam of one give different words."""
    import shutil

    import torch

    from asr.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("unsure") / "model"
    shutil.copytree(tiny_model_dir, root)
    obj = load_checkpoint(root / "model.pt")
    g = torch.Generator().manual_seed(0)
    for name, value in obj["model"].items():
        if name.startswith("decoder.") and value.is_floating_point() and value.numel() > 1:
            value.add_(torch.randn(value.shape, generator=g) * value.std())
    save_checkpoint(root / "model.pt", obj)
    return root


def _speech_only_clips(utts, root) -> list[Utterance]:
    """Each clip cut to its one VAD region, so that transcribe's segment (the region plus padding, within
    the file) is the whole file and both commands decode the very same samples."""
    import soundfile as sf

    from asr.audio import load_audio
    from asr.transcribe import EnergyVad, VadConfig

    out = []
    for u in utts:
        wave = load_audio(u.audio)
        vad = EnergyVad(VadConfig(), 16000)
        regions = vad.push(wave) + vad.finish()
        if len(regions) != 1:
            continue
        start, end = regions[0]
        path = root / f"{u.id}.wav"
        sf.write(path, wave[start:end], 16000, subtype="FLOAT")
        out.append(Utterance(u.id, str(path), round((end - start) / 16000, 4), u.text, u.speaker))
    return out


def _decode_and_transcribe(model_dir, utts, root, flags) -> tuple[dict, dict]:
    manifest = root / "utts.jsonl"
    write_manifest(manifest, utts)
    assert main(["decode", "--model", str(model_dir), "--manifest", str(manifest), "--out-dir",
                 str(root / "dec"), "--no-progress", *flags]) == 0
    decoded = {h["id"]: h["text"] for h in _read_jsonl(root / "dec" / "hyps.jsonl")}
    assert main(["transcribe", "--model", str(model_dir), *(u.audio for u in utts), "--output-dir",
                 str(root / "tr"), *flags]) == 0
    return decoded, {u.id: (root / "tr" / f"{u.id}.txt").read_text().strip() for u in utts}


def test_decode_and_transcribe_give_the_same_text(unsure_model_dir, tiny_corpus, tmp_path):
    """Both commands choose the search through asr.decoding.search, so the same audio and flags give the
    same words."""
    utts = _speech_only_clips(read_manifest(tiny_corpus.manifest), tmp_path)
    assert len(utts) >= 15
    texts = {}
    for i, flags in enumerate([["--beam", "1", "--ctc-weight", "0"], ["--beam", "1"], ["--beam", "3"]]):
        (tmp_path / str(i)).mkdir()
        decoded, transcribed = _decode_and_transcribe(unsure_model_dir, utts, tmp_path / str(i), flags)
        assert transcribed == decoded, flags
        texts[i] = decoded
    # The flags matter for this model: greedy and a CTC-scored beam of one disagree somewhere, so a
    # command that ran greedy search for --beam 1 (as transcribe once did) would fail the check above.
    assert texts[0] != texts[1]
    # The CTC-scored beam is not worse than greedy on this model. On this machine the two tied at 8 of
    # 15 clips, with and without the change of this commit, so the test asks for "not worse", not "better".
    assert sum(texts[1][u.id] == u.text for u in utts) >= sum(texts[0][u.id] == u.text for u in utts)


def _corrupt_model_dirs(model_dir, root):
    """Copies of a model folder: one whose model.pt fails its checksum, one truncated but re-checksummed."""
    import hashlib
    import shutil

    flipped, garbage = root / "flipped", root / "truncated"
    for d in (flipped, garbage):
        shutil.copytree(model_dir, d)
    data = bytearray((flipped / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / "model.pt").write_bytes(bytes(data))
    junk = (garbage / "model.pt").read_bytes()[:4096]  # a copy cut short, with a checksum that fits it
    (garbage / "model.pt").write_bytes(junk)
    (garbage / "model.pt.sha256").write_text(f"{hashlib.sha256(junk).hexdigest()}  model.pt\n")
    return {"checksum mismatch": flipped, "corrupt checkpoint": garbage}


def test_corrupt_model_folder_is_one_line_error_in_decode_and_transcribe(tiny_model_dir, tiny_corpus, tmp_path,
                                                                          capsys):
    manifest = tmp_path / "one.jsonl"
    utt = read_manifest(tiny_corpus.manifest)[0]
    write_manifest(manifest, [utt])
    for reason, model_dir in _corrupt_model_dirs(tiny_model_dir, tmp_path).items():
        commands = [["decode", "--model", str(model_dir), "--manifest", str(manifest), "--out-dir",
                     str(tmp_path / "o"), "--no-progress"],
                    ["transcribe", "--model", str(model_dir), utt.audio, "--output-dir", str(tmp_path / "t")]]
        for argv in commands:
            assert main(argv) == EXIT_USER_ERROR
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, err
            assert err.startswith(f"asr: error: {model_dir / 'model.pt'}: ") and reason in err, err
            assert "Traceback" not in err
    assert not (tmp_path / "o" / "hyps.jsonl").exists() and not (tmp_path / "t").exists()
