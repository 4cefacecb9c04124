"""Importers (LibriSpeech, Kaldi, FSDD, TSV), the Kaldi exporter, and their CLI commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import shared_data

from asr.cli import EXIT_PARTIAL, main
from asr.data.importers import (
    FSDD_NAME_RE,
    export_kaldi,
    import_fsdd,
    import_kaldi,
    import_librispeech,
    import_tsv,
)
from asr.data.manifest import Utterance, read_manifest
from asr.errors import DataError


def tone(path: Path, seconds: float, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.fixture
def libri(tmp_path) -> Path:
    chapter = tmp_path / "dev-clean" / "84" / "121123"
    tone(chapter / "84-121123-0000.flac", 1.5)
    tone(chapter / "84-121123-0001.flac", 0.75)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 but in less than 5 minutes\n84-121123-0002 NO AUDIO\n")
    return tmp_path


def test_librispeech_import(libri):
    result = import_librispeech(libri / "dev-clean")
    assert [u.id for u in result.utterances] == ["84-121123-0000", "84-121123-0001"]
    first, second = result.utterances
    assert (first.speaker, first.text, first.offset) == ("84", "GO DO YOU HEAR", 0.0)
    assert first.duration == pytest.approx(1.5) and second.duration == pytest.approx(0.75)
    assert second.text == "BUT IN LESS THAN FIVE MINUTES"  # normalised
    assert Path(first.audio).is_absolute() and Path(first.audio).exists()
    assert [f[0] for f in result.failures] == ["84-121123-0002"]
    # The corpus root plus a subset name finds the same utterances; --no-normalize keeps the text.
    raw = import_librispeech(libri, "dev-clean", normalize=False)
    assert [u.id for u in raw.utterances] == [u.id for u in result.utterances]
    assert raw.utterances[1].text == "but in less than 5 minutes"


def test_librispeech_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        import_librispeech(tmp_path / "nope")
    with pytest.raises(DataError, match="trans.txt"):
        import_librispeech(tmp_path)


@pytest.fixture
def kaldi_dir(tmp_path) -> Path:
    tone(tmp_path / "audio" / "rec1.wav", 4.0)
    tone(tmp_path / "audio" / "rec2.wav", 2.0, rate=8000)
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"rec1 {tmp_path / 'audio' / 'rec1.wav'}\nrec2 {tmp_path / 'audio' / 'rec2.wav'}\n")
    (d / "segments").write_text("spkA-u1 rec1 0.50 1.75\nspkA-u2 rec1 2.0 -1\nspkB-u3 rec2 0 1.0\n"
                                "spkB-u4 rec9 0 1\nspkB-u5 rec2 1.5 9.0\nspkB-u6 rec2 1.0 0.5\n")
    (d / "text").write_text("spkA-u1 Hello there\nspkA-u2 2nd part\nspkB-u3 Third\nspkB-u5 beyond\n"
                            "spkB-u6 backwards\n")
    (d / "utt2spk").write_text("spkA-u1 spkA\nspkA-u2 spkA\nspkB-u3 spkB\n")
    return d


def test_kaldi_import_with_segments(kaldi_dir):
    result = import_kaldi(kaldi_dir)
    utts = {u.id: u for u in result.utterances}
    assert sorted(utts) == ["spkA-u1", "spkA-u2", "spkB-u3"]
    u1, u2, u3 = utts["spkA-u1"], utts["spkA-u2"], utts["spkB-u3"]
    assert (u1.offset, u1.duration, u1.text, u1.speaker) == (0.5, pytest.approx(1.25), "HELLO THERE", "spkA")
    assert (u2.offset, u2.duration, u2.text) == (2.0, pytest.approx(2.0), "SECOND PART")  # -1 = to the end
    assert u3.audio.endswith("rec2.wav") and u3.duration == pytest.approx(1.0)
    reasons = dict(result.failures)
    assert set(reasons) == {"spkB-u4", "spkB-u5", "spkB-u6"}
    assert "rec9" in reasons["spkB-u4"] and "beyond" in reasons["spkB-u5"] and "bad segment" in reasons["spkB-u6"]


def test_kaldi_import_without_segments_and_pipes(kaldi_dir):
    (kaldi_dir / "segments").unlink()
    (kaldi_dir / "text").write_text("rec1 one\nrec2 two\n")
    result = import_kaldi(kaldi_dir)
    assert [(u.id, round(u.duration, 3), u.text, u.speaker) for u in result.utterances] == \
        [("rec1", 4.0, "ONE", ""), ("rec2", 2.0, "TWO", "")]
    (kaldi_dir / "wav.scp").write_text("rec1 sox in.sph -t wav - |\n")
    with pytest.raises(DataError, match="pipes"):
        import_kaldi(kaldi_dir)
    (kaldi_dir / "text").unlink()
    with pytest.raises(DataError, match="text is missing"):
        import_kaldi(kaldi_dir)


def test_export_kaldi_round_trip(kaldi_dir, tmp_path):
    utts = import_kaldi(kaldi_dir).utterances
    out = export_kaldi(utts, tmp_path / "exported")
    assert (out / "segments").exists()
    assert (out / "spk2utt").read_text() == "spkA spkA-u1 spkA-u2\nspkB spkB-u3\n"
    back = {u.id: u for u in import_kaldi(out).utterances}
    for u in utts:
        b = back[u.id]
        assert (b.audio, b.text, b.offset) == (u.audio, u.text, pytest.approx(u.offset))
        assert b.duration == pytest.approx(u.duration, abs=1e-3)
        assert b.speaker == (u.speaker or u.id)


def test_export_kaldi_without_offsets_has_no_segments(libri, tmp_path):
    utts = import_librispeech(libri / "dev-clean").utterances
    out = export_kaldi(utts, tmp_path / "k")
    assert not (out / "segments").exists()
    assert (out / "wav.scp").read_text().splitlines()[0] == f"84-121123-0000 {utts[0].audio}"
    back = import_kaldi(out).utterances
    assert [(u.id, u.text, u.speaker) for u in back] == [(u.id, u.text, u.speaker) for u in utts]


@pytest.fixture
def fsdd_dir(tmp_path) -> Path:
    for name in ("3_alice_0.wav", "3_alice_7.wav", "3_alice_45.wav", "7_bob_2.wav", "0_bob_44.wav", "0_bob_49.wav"):
        tone(tmp_path / name, 0.4, rate=8000)
    (tmp_path / "notes_1.wav").write_bytes(b"")
    return tmp_path


def _ids(result) -> list[str]:
    return sorted(u.id for u in result.utterances)


def test_fsdd_official_and_holdout_splits(fsdd_dir):
    # Official: takes 0-4 test, 45-49 dev, the rest train.
    train, dev, test = (import_fsdd(fsdd_dir, split) for split in ("train", "dev", "test"))
    assert _ids(train) == ["0_bob_44", "3_alice_7"]
    assert _ids(dev) == ["0_bob_49", "3_alice_45"]
    assert _ids(test) == ["3_alice_0", "7_bob_2"]
    assert {u.id: u.text for u in test.utterances} == {"3_alice_0": "THREE", "7_bob_2": "SEVEN"}
    assert test.utterances[0].speaker == "alice" and test.utterances[0].duration == pytest.approx(0.4)
    assert [f[0] for f in train.failures] == ["notes_1.wav"]
    assert len(import_fsdd(fsdd_dir, "all").utterances) == 6
    # Held-out speaker: all of bob's takes are test; alice's takes 45-49 are dev, whatever the take.
    assert _ids(import_fsdd(fsdd_dir, "test", holdout_speaker="bob")) == ["0_bob_44", "0_bob_49", "7_bob_2"]
    assert _ids(import_fsdd(fsdd_dir, "train", "bob")) == ["3_alice_0", "3_alice_7"]
    assert _ids(import_fsdd(fsdd_dir, "dev", "bob")) == ["3_alice_45"]
    with pytest.raises(DataError, match="carol"):
        import_fsdd(fsdd_dir, "test", holdout_speaker="carol")
    with pytest.raises(DataError, match="split must be"):
        import_fsdd(fsdd_dir, "valid")


def test_cli_import_fsdd(fsdd_dir, tmp_path, capsys):
    out = tmp_path / "m" / "dev.jsonl"
    # The unparsable notes_1.wav is skipped and listed: exit 1 (partial), the rest written.
    assert main(["manifest", "import", "fsdd", str(fsdd_dir), "--split", "dev", "--out", str(out)]) == EXIT_PARTIAL
    assert [(u.id, u.text, u.speaker) for u in read_manifest(out)] == \
        [("0_bob_49", "ZERO", "bob"), ("3_alice_45", "THREE", "alice")]
    assert (tmp_path / "m" / "dev.failures.tsv").read_text().startswith("notes_1.wav\t")
    assert "2 utterances" in capsys.readouterr().out
    held = tmp_path / "held.jsonl"
    assert main(["manifest", "import", "fsdd", str(fsdd_dir), "--split", "test", "--holdout-speaker", "bob",
                 "--out", str(held)]) == EXIT_PARTIAL
    assert [u.id for u in read_manifest(held)] == ["0_bob_44", "0_bob_49", "7_bob_2"]
    assert main(["manifest", "import", "fsdd", str(fsdd_dir), "--holdout-speaker", "carol", "--out",
                 str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "carol" in err and "Traceback" not in err and not (tmp_path / "x.jsonl").exists()


def test_fsdd_real_recordings():
    fsdd = shared_data("fsdd")
    if fsdd is None:
        pytest.skip("no shared FSDD data beside the checkout (../shared/data/fsdd or $ASR_SHARED_DIR)")
    recordings = fsdd / "recordings" if (fsdd / "recordings").is_dir() else fsdd
    parsed = [FSDD_NAME_RE.match(p.name) for p in recordings.glob("*.wav")]
    takes = [int(m.group(3)) for m in parsed if m]
    parts = {split: import_fsdd(recordings, split) for split in ("train", "dev", "test")}
    assert len(parts["test"].utterances) == sum(t < 5 for t in takes) > 0
    assert len(parts["dev"].utterances) == sum(t >= 45 for t in takes) > 0
    assert sum(len(p.utterances) for p in parts.values()) == len(takes)
    assert all(not p.failures for p in parts.values())
    test = parts["test"].utterances
    assert {u.text for u in test} <= {"ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT",
                                      "NINE"}
    assert all(0.05 < u.duration < 10 for u in test)


def test_tsv_import(tmp_path):
    tone(tmp_path / "a.wav", 1.0)
    tone(tmp_path / "sub" / "a.wav", 0.5)
    tsv = tmp_path / "list.tsv"
    tsv.write_text("path\ttext\na.wav\tHello 2 you\nsub/a.wav\tagain\nmissing.wav\tlost\nb.wav\t\nno tab here\n")
    result = import_tsv(tsv)
    assert [(u.id, u.text, round(u.duration, 3)) for u in result.utterances] == \
        [("a", "HELLO TWO YOU", 1.0), ("a-2", "AGAIN", 0.5)]
    assert [f[0] for f in result.failures] == ["b", f"{tsv}:6", "missing"]


def test_cli_import_tsv(tmp_path, capsys):
    tone(tmp_path / "a.wav", 1.0)
    tone(tmp_path / "b.wav", 0.5)
    tsv = tmp_path / "list.tsv"
    tsv.write_text("a.wav\tHello 2 you\nb.wav\tagain\n")
    out = tmp_path / "t.jsonl"
    assert main(["manifest", "import", "tsv", str(tsv), "--out", str(out)]) == 0
    assert [(u.id, u.text) for u in read_manifest(out)] == [("a", "HELLO TWO YOU"), ("b", "AGAIN")]
    assert not (tmp_path / "t.failures.tsv").exists()
    assert main(["manifest", "import", "tsv", str(tsv), "--no-normalize", "--out", str(out)]) == 0
    assert [u.text for u in read_manifest(out)] == ["Hello 2 you", "again"]
    assert "2 utterances" in capsys.readouterr().out


def test_cli_import_writes_manifest_and_failures(libri, tmp_path, capsys):
    out = tmp_path / "m" / "dev.jsonl"
    status = main(["manifest", "import", "librispeech", str(libri), "--subset", "dev-clean", "--out", str(out)])
    assert status == EXIT_PARTIAL
    assert [u.id for u in read_manifest(out)] == ["84-121123-0000", "84-121123-0001"]
    failures = (tmp_path / "m" / "dev.failures.tsv").read_text().splitlines()
    assert len(failures) == 1 and failures[0].startswith("84-121123-0002\t")
    kaldi = tmp_path / "kaldi"
    assert main(["manifest", "export-kaldi", str(out), str(kaldi)]) == 0
    assert (kaldi / "text").read_text().splitlines()[0] == "84-121123-0000 GO DO YOU HEAR"
    assert main(["manifest", "import", "kaldi", str(kaldi), "--out", str(tmp_path / "k.jsonl")]) == 0
    assert main(["manifest", "import", "tsv", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "t.jsonl")]) == 2
    assert "none.tsv" in capsys.readouterr().err


def test_export_reads_manifest_utterances(tmp_path):
    audio = str(tone(tmp_path / "x.wav", 2.0))
    utts = [Utterance("b", audio, 1.0, "B", "s", 1.0), Utterance("a", audio, 1.0, "A", "s", 0.0)]
    out = export_kaldi(utts, tmp_path / "k")
    assert (out / "segments").read_text() == "a rec000000 0.000 1.000\nb rec000000 1.000 2.000\n"
    assert (out / "wav.scp").read_text() == f"rec000000 {audio}\n"
