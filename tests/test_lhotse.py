"""lhotse CutSets: export a manifest, import it back, the same utterances; bad cuts are listed, not fatal."""

from __future__ import annotations

import json
import os

import pytest

from asr.data.manifest import Utterance, read_manifest, write_manifest

if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.importorskip("lhotse")


def _utts(tiny_corpus):
    utts = tiny_corpus.utts[:5]
    # A segment of a longer file (offset > 0) and a speakerless entry survive the round trip too.
    first = utts[0]
    seg = Utterance(id="seg-1", audio=first.audio, duration=round(first.duration / 2, 4), text=first.text,
                    speaker="", offset=round(first.duration / 4, 4))
    return utts + [seg]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_round_trip(tiny_corpus, tmp_path, suffix):
    from asr.cli import main

    utts = _utts(tiny_corpus)
    write_manifest(tmp_path / "in.jsonl", utts)
    cuts = tmp_path / f"cuts{suffix}"
    assert main(["manifest", "export-lhotse", str(tmp_path / "in.jsonl"), str(cuts)]) == 0
    assert main(["manifest", "import", "lhotse", str(cuts), "--out", str(tmp_path / "back.jsonl")]) == 0
    back = read_manifest(tmp_path / "back.jsonl")
    assert [(u.id, u.audio, u.text, u.speaker) for u in back] == [(u.id, u.audio, u.text, u.speaker) for u in utts]
    for a, b in zip(back, utts):
        assert a.offset == pytest.approx(b.offset, abs=1e-3) and a.duration == pytest.approx(b.duration, abs=1e-3)


def test_lhotse_reads_our_cuts_and_we_read_its_own(tiny_corpus, tmp_path):
    import lhotse

    from asr.data.lhotse_io import export_lhotse, import_lhotse

    utts = _utts(tiny_corpus)
    cuts = lhotse.CutSet.from_file(export_lhotse(utts, tmp_path / "c.jsonl.gz"))
    cut = next(c for c in cuts if c.id == "seg-1")
    assert cut.start == pytest.approx(utts[-1].offset) and cut.supervisions[0].text == utts[-1].text
    # Cuts made by lhotse itself from a recording: one of them with an unreadable (URL) source.
    rec = lhotse.Recording.from_file(utts[1].audio)
    sup = lhotse.SupervisionSegment(id="s", recording_id=rec.id, start=0, duration=rec.duration, text="go up",
                                    speaker="spk")
    own = lhotse.CutSet.from_manifests(lhotse.RecordingSet.from_recordings([rec]),
                                       lhotse.SupervisionSet.from_segments([sup]))
    url = lhotse.Recording(id="web", sources=[lhotse.AudioSource(type="url", channels=[0], source="http://x/y.wav")],
                           sampling_rate=16000, num_samples=16000, duration=1.0)
    bad = lhotse.MonoCut(id="web-cut", start=0, duration=1.0, channel=0, recording=url,
                         supervisions=[lhotse.SupervisionSegment(id="w", recording_id="web", start=0, duration=1,
                                                                 text="no")])
    (own + lhotse.CutSet.from_cuts([bad])).to_file(tmp_path / "own.jsonl")
    utts, failures = import_lhotse(tmp_path / "own.jsonl")
    assert [(u.text, u.speaker) for u in utts] == [("GO UP", "spk")]
    assert failures == [("web-cut", "audio must be one file (got source type url)")]


def test_bad_cutset_is_one_line_error(tmp_path, capsys):
    from asr.cli import EXIT_USER_ERROR, main

    (tmp_path / "bad.jsonl").write_text(json.dumps({"nonsense": 1}) + "\n")
    assert main(["manifest", "import", "lhotse", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o.jsonl")]) \
        == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("asr: error:") and "bad.jsonl" in err and len(err.splitlines()) == 1
