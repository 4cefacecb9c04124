"""``asr transcribe`` on the console: segments with times on stdout as decoded, --quiet, headers, n-best, LM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from asr.transcribe import Segment, format_console, format_console_time

LINE = re.compile(r"^\[(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d)\.(\d{3})\] (.+)$")


def test_console_time_format():
    assert format_console_time(0) == "00:00.000"
    assert format_console_time(2.34) == "00:02.340"
    assert format_console_time(62.5) == "01:02.500"
    assert format_console_time(3723.5) == "1:02:03.500"
    seg = Segment(0.0, 2.34, "GO\nUP", [], -0.1)
    assert format_console(seg) == "[00:00.000 --> 00:02.340] GO UP"


def _run(tiny_model_dir, *args):
    from asr.cli import main

    return main(["transcribe", "--model", str(tiny_model_dir), "--beam", "1", "--ctc-weight", "0", *map(str, args)])


def test_segments_are_printed_with_times_and_match_the_files(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    utt = tiny_corpus.utts[0]
    assert _run(tiny_model_dir, utt.audio, "--format", "json", "--output-dir", tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    segs = json.loads((tmp_path / (Path(utt.audio).stem + ".json")).read_text())["segments"]
    assert lines and len(lines) == len(segs)
    for line, seg in zip(lines, segs):
        m = LINE.match(line)
        assert m, line
        start = int(m[1]) * 60 + int(m[2]) + int(m[3]) / 1000
        end = int(m[4]) * 60 + int(m[5]) + int(m[6]) / 1000
        assert start == pytest.approx(seg["start"], abs=1e-3) and end == pytest.approx(seg["end"], abs=1e-3)
        assert m[7] == seg["text"]


def test_quiet_prints_nothing_and_several_inputs_get_headers(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    a, b = tiny_corpus.utts[0].audio, tiny_corpus.utts[1].audio
    assert _run(tiny_model_dir, a, "--quiet", "--output-dir", tmp_path / "q") == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "q" / (Path(a).stem + ".txt")).read_text().strip()
    assert _run(tiny_model_dir, a, b, "--output-dir", tmp_path / "two") == 0
    out = capsys.readouterr().out.splitlines()
    headers = [i for i, line in enumerate(out) if line.startswith("==> ")]
    assert [out[i] for i in headers] == [f"==> {a} <==", f"==> {b} <=="]
    assert headers[0] == 0 and all(LINE.match(line) for i, line in enumerate(out) if i not in headers)
    assert headers[1] - headers[0] > 1 and len(out) > headers[1] + 1  # each file printed its own segments


def test_nbest_lists_hypotheses_with_scores_in_json(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    utt = tiny_corpus.utts[2]
    assert _run(tiny_model_dir, utt.audio, "--beam", "4", "--nbest", "3", "--format", "json",
                "--output-dir", tmp_path) == 0
    segs = json.loads((tmp_path / (Path(utt.audio).stem + ".json")).read_text())["segments"]
    assert segs
    for seg in segs:
        alts = seg["alternatives"]
        assert 1 <= len(alts) <= 3 and alts[0]["text"] == seg["text"]
        scores = [a["score"] for a in alts]
        assert scores == sorted(scores, reverse=True)
        assert len({a["text"] for a in alts}) == len(alts) or len(alts) == 1
    assert _run(tiny_model_dir, utt.audio, "--format", "json", "--output-dir", tmp_path / "one") == 0
    one = json.loads((tmp_path / "one" / (Path(utt.audio).stem + ".json")).read_text())["segments"]
    assert all(seg["alternatives"] == [] for seg in one)


def test_transcribe_with_lm_fusion(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    from asr.cli import main

    lm_dir = tmp_path / "lm"
    assert main(["train-lm", "--manifest", str(tiny_corpus.manifest), "--tokenizer",
                 str(tiny_model_dir / "tokenizer.model"), "--out", str(lm_dir), "-o", "lm.epochs=2",
                 "-o", "lm.hidden=32", "-o", "lm.embed_dim=16"]) == 0
    utt = tiny_corpus.utts[0]
    capsys.readouterr()
    assert _run(tiny_model_dir, utt.audio, "--beam", "2", "--lm", lm_dir, "--lm-weight", "0.5",
                "--output-dir", tmp_path / "o") == 0
    assert LINE.match(capsys.readouterr().out.splitlines()[0])
    # The LM is really used: a huge weight lets it override the acoustics of at least one clip.
    import asr
    from asr.transcribe import transcribe

    rec = asr.load_model(tiny_model_dir)
    lm = rec.load_lm(lm_dir)
    opts = asr.DecodeOptions(beam_size=2, ctc_weight=0.0, lm_weight=0.0)
    heavy = asr.DecodeOptions(beam_size=2, ctc_weight=0.0, lm_weight=20.0)
    clips = [u.audio for u in tiny_corpus.utts[:6]]
    plain = [[s.text for s in transcribe(rec, c, opts, lm=lm)] for c in clips]
    fused = [[s.text for s in transcribe(rec, c, heavy, lm=lm)] for c in clips]
    assert plain != fused
