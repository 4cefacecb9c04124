"""Long-form transcription: VAD, segmentation, stitching, writers, CLI, stdin streaming, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.transcribe import (
    EnergyVad,
    Segmenter,
    TranscribeConfig,
    VadConfig,
    format_console,
    format_timestamp,
    iter_array_blocks,
    iter_pcm_blocks,
    transcribe,
)

SR = 16000
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Synthetic signals (no model needed)
# ---------------------------------------------------------------------------------------------


def _bursts(spans, total, noise_db=None, seed=0):
    """Tone bursts (amplitude 0.3) at ``spans`` [(start_s, end_s)] in ``total`` seconds of silence/noise."""
    rng = np.random.default_rng(seed)
    x = np.zeros(int(total * SR), np.float32)
    if noise_db is not None:
        x += rng.normal(0, 10 ** (noise_db / 20), len(x)).astype(np.float32)
    t = np.arange(len(x)) / SR
    for a, b in spans:
        sel = (t >= a) & (t < b)
        x[sel] += 0.3 * np.sin(2 * np.pi * 220 * t[sel]) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t[sel]))
    return x


def _regions(x, cfg=VadConfig(), block=SR):
    vad = EnergyVad(cfg, SR)
    out = []
    for b in iter_array_blocks(x, block / SR, SR):
        out += vad.push(b)
    out += vad.finish()
    return [(a / SR, b / SR) for a, b in out]


@pytest.mark.parametrize("noise_db", [None, -45.0])
def test_vad_finds_bursts_in_silence_and_noise(noise_db):
    spans = [(1.0, 2.0), (3.5, 3.9), (5.0, 7.5)]
    found = _regions(_bursts(spans, 9.0, noise_db))
    assert len(found) == len(spans)
    for (a, b), (fa, fb) in zip(spans, found):
        assert abs(fa - a) <= 0.05 and b <= fb <= b + VadConfig().hangover + 0.05


def test_vad_merges_short_pauses_drops_clicks_and_ignores_block_size():
    x = _bursts([(1.0, 2.0), (2.1, 3.0), (5.0, 5.03)], 6.0)  # 0.1 s pause; a 30 ms click
    found = _regions(x)
    assert len(found) == 1 and abs(found[0][0] - 1.0) <= 0.05 and found[0][1] >= 3.0
    for block in (160 * 7 + 3, 4000, len(x)):
        assert _regions(x, block=block) == found


def test_vad_silence_and_dither_give_nothing():
    rng = np.random.default_rng(0)
    assert _regions(np.zeros(5 * SR, np.float32)) == []
    assert _regions(rng.normal(0, 3e-4, 5 * SR).astype(np.float32)) == []


def _segment(x, cfg, find_cut=None, block=SR):
    seg = Segmenter(VadConfig(), cfg, SR, find_cut) if find_cut else Segmenter(VadConfig(), cfg, SR)
    chunks = []
    for b in iter_array_blocks(x, block / SR, SR):
        chunks += seg.push(b)
    return chunks + seg.finish()


def test_segmenter_cuts_long_regions_with_overlap():
    x = _bursts([(0.5, 11.5)], 12.0)
    cfg = TranscribeConfig(max_segment=4.0, overlap=0.5, cut_search=2.0)
    chunks = _segment(x, cfg, block=int(2.7 * SR))
    assert len(chunks) >= 3
    assert all(len(c.samples) <= 4.0 * SR for c in chunks)
    assert [c.overlaps_previous for c in chunks] == [False] + [True] * (len(chunks) - 1)
    for prev, cur in zip(chunks, chunks[1:]):
        prev_end = prev.start + len(prev.samples)
        assert prev_end - cur.start == int(0.5 * SR)  # each piece restarts `overlap` before the cut
    last = chunks[-1]
    assert last.start + len(last.samples) >= 11.5 * SR
    # Every chunk holds exactly the stream's samples at its position.
    for c in chunks:
        np.testing.assert_array_equal(c.samples, x[c.start : c.start + len(c.samples)])


def test_segmenter_cuts_where_the_finder_says():
    x = _bursts([(0.5, 9.5)], 10.0)
    cfg = TranscribeConfig(max_segment=4.0, overlap=0.5, cut_search=2.0)
    chunks = _segment(x, cfg, find_cut=lambda window, lo, hi: lo + 800)
    assert len(chunks[0].samples) == int(2.0 * SR) + 800


def test_segmenter_holds_bounded_audio():
    seg = Segmenter(VadConfig(), TranscribeConfig(max_segment=5.0, overlap=0.5), SR)
    x = _bursts([(3.0, 4.0)], 30.0)
    held = []
    for b in iter_array_blocks(x, 0.5, SR):
        seg.push(b)
        held.append(len(seg._buf))
    assert max(held) <= 6 * SR


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    from asr.tokenizer import Tokenizer

    texts = ["YES NO UP DOWN", "LEFT RIGHT STOP GO", "GO UP", "STOP DOWN LEFT"] * 5
    return Tokenizer.train(texts, tmp_path_factory.mktemp("tok") / "tok", vocab_size=30)


def _decoded(tok, words, start, end, overlaps):
    from asr.transcribe import Decoded

    timed = [(w, a, b, tok.encode(w), np.full(len(tok.encode(w)), 0.9)) for w, a, b in words]
    tokens = [t for _, _, _, ids, _ in timed for t in ids]
    return Decoded(start, end, overlaps, tokens, timed, -0.1, {}, True, np.full(len(tokens) + 1, 0.9))


def test_stitch_drops_words_the_previous_chunk_covered(word_tokenizer):
    from asr.transcribe import StitchState, stitch

    tok, state = word_tokenizer, StitchState()
    first = stitch(_decoded(tok, [("YES", 0.2, 0.5), ("NO", 1.0, 1.3), ("UP", 2.6, 2.9)], 0.0, 3.0, False),
                   state, tok)
    assert first.text == "YES NO UP" and state.end == 3.0
    second = stitch(_decoded(tok, [("UP", 2.6, 2.95), ("DOWN", 3.2, 3.6)], 2.5, 5.0, True), state, tok)
    assert second.text == "DOWN" and second.start == 3.0 and second.tokens == tok.encode("DOWN")
    assert [w.word for w in second.words] == ["DOWN"]
    # A chunk after a pause (no overlap) keeps everything, even a repeated word.
    third = stitch(_decoded(tok, [("DOWN", 6.0, 6.4)], 5.9, 6.6, False), state, tok)
    assert third.text == "DOWN" and third.start == 5.9
    # Without word times, a word run repeated at the seam is dropped by text.
    untimed = _decoded(tok, [("DOWN", 0, 0), ("GO", 0, 0)], 6.3, 8.0, True)
    untimed.words = []
    fourth = stitch(untimed, state, tok)
    assert fourth.text == "GO" and fourth.tokens == tok.encode("GO")


def test_is_speech_needs_tokens_a_fair_score_and_ctc_or_a_sure_decoder():
    from asr.transcribe import is_speech

    cfg = TranscribeConfig(min_avg_logprob=-3.0, no_speech_logprob=-1.0)
    assert is_speech([5], -0.2, False, cfg) and is_speech([5], -0.2, True, cfg)
    assert is_speech([5], -2.0, False, cfg) and not is_speech([5], -2.0, True, cfg)
    assert not is_speech([5], -3.5, False, cfg) and not is_speech([], 0.0, False, cfg)


def test_format_timestamp():
    assert format_timestamp(3723.5) == "01:02:03,500"
    assert format_timestamp(0.0004, ".") == "00:00:00.000"
    assert format_timestamp(59.9996) == "00:01:00,000"


def test_inputs_expand_folders_and_output_names_never_collide(tmp_path):
    from asr.transcribe import expand_inputs, output_stem

    for rel in ("a/x.wav", "a/sub/y.flac", "a/notes.txt", "b/x.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = expand_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "x.wav"), "-", str(tmp_path / "nope")])
    assert [Path(p).name for p, _ in found] == ["y.flac", "x.wav", "x.wav", "-", "nope"]
    out, taken = tmp_path / "out", set()
    stems = [output_stem(p, root, out, taken) for p, root in found]
    assert stems[:4] == [out / "sub" / "y", out / "x", out / "x-2", out / "stdin"]


def test_pcm_blocks_from_stream_with_resampling():
    import io

    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    data = (tone * 32767).astype("<i2").tobytes() + b"\x01"  # a stray odd byte is ignored
    blocks = list(iter_pcm_blocks(io.BytesIO(data), 8000, SR, 0.25))
    out = np.concatenate(blocks)
    assert abs(len(out) - 2 * len(tone)) <= 2
    assert abs(np.sqrt(np.mean(out**2)) - 0.5 / np.sqrt(2)) < 0.02


# ---------------------------------------------------------------------------------------------
# With the tiny trained model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir):
    """The tiny model on one torch thread (as ``asr transcribe`` runs), restored afterwards."""
    import torch

    import asr

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield asr.load_model(tiny_model_dir)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def long_audio(tiny_corpus, tmp_path_factory):
    """All tiny-corpus utterances joined by pauses of 0.3-2 s: (path, audio, texts, speech spans)."""
    from asr.audio import load_audio

    rng = np.random.default_rng(3)
    parts, spans, texts, t = [], [], [], 0
    for u in tiny_corpus.utts:
        wave = load_audio(u.audio)
        loud = np.flatnonzero(np.abs(wave) > 0.01 * np.abs(wave).max())  # speech: within 40 dB of the peak
        a, b = loud[0], loud[-1] + 1
        pause = np.zeros(int(rng.uniform(0.3, 2.0) * SR), np.float32)
        spans.append(((t + a) / SR, (t + b) / SR))
        texts.append(u.text)
        parts += [wave, pause]
        t += len(wave) + len(pause)
    audio = np.concatenate(parts)
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, audio, SR, subtype="PCM_16")
    return path, audio, texts, spans


def _wer(refs, hyp_text):
    import jiwer

    return jiwer.wer(" ".join(refs), hyp_text)


def _greedy():
    from asr.decoding import DecodeOptions

    return DecodeOptions(beam_size=1, ctc_weight=0.0)


def test_long_file_matches_per_utterance_decoding(recognizer, long_audio, tiny_corpus):
    import torch

    from asr.audio import load_audio

    path, _, texts, spans = long_audio
    waves = [load_audio(u.audio) for u in tiny_corpus.utts]
    per_utt = []
    for w in waves:
        hyp = recognizer.decode_batch(torch.from_numpy(w)[None], torch.tensor([len(w)]), _greedy())[0][0]
        per_utt.append(recognizer.tokenizer.decode(hyp.tokens))
    segments = transcribe(recognizer, path, _greedy())
    long_wer = _wer(texts, " ".join(s.text for s in segments))
    assert long_wer <= _wer(texts, " ".join(per_utt)) + 0.05
    starts, ends = [a for a, _ in spans], [b for _, b in spans]
    for s in segments:
        assert min(abs(s.start - a) for a in starts) <= 0.2, s
        assert min(abs(s.end - b) for b in ends) <= 0.2, s
    assert [s.start for s in segments] == sorted(s.start for s in segments)


def _trim(wave):
    loud = np.flatnonzero(np.abs(wave) > 0.01 * np.abs(wave).max())  # within 40 dB of the peak
    return wave[loud[0] : loud[-1] + 1]


def test_forced_max_length_split_cuts_in_pauses_and_keeps_words_once(recognizer, tiny_corpus):
    from asr.audio import load_audio

    utts = tiny_corpus.utts[8:16]
    waves = [_trim(load_audio(u.audio)) for u in utts]
    gap = int(0.2 * SR)  # shorter than VadConfig.min_silence: the VAD sees one long region
    audio = np.concatenate([p for w in waves for p in (w, np.zeros(gap, np.float32))])
    pauses = np.cumsum([len(w) + gap for w in waves]) / SR
    pauses = [(end - gap / SR, end) for end in pauses]
    assert len(_regions(audio)) == 1
    refs = " ".join(u.text for u in utts)
    cfg = TranscribeConfig(max_segment=2.0, overlap=0.3, cut_search=1.0)
    segments = transcribe(recognizer, audio, _greedy(), cfg)
    assert len(segments) >= 3  # the 8-second region was cut (a piece the filter drops may be missing)
    assert all(s.end - s.start <= cfg.max_segment + 1e-6 for s in segments)
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:]))  # overlaps were stitched away
    cuts = [s.end for s in segments[:-1]] + [s.start for s in segments[1:]]
    for cut in cuts:
        assert any(p0 - 0.02 <= cut <= p1 + 0.02 for p0, p1 in pauses), f"cut at {cut} is not in a pause"
    hyp_words = " ".join(s.text for s in segments).split()
    assert len(hyp_words) <= len(refs.split()) + 2  # the overlaps did not double words
    # Cut pieces are closer to what the model was trained on than the whole 8-second region is.
    whole = transcribe(recognizer, audio, _greedy(), TranscribeConfig(max_segment=20.0))
    assert len(whole) == 1
    assert _wer([refs], " ".join(hyp_words)) <= _wer([refs], whole[0].text)


def test_silence_gives_empty_transcript(recognizer):
    rng = np.random.default_rng(0)
    assert transcribe(recognizer, np.zeros(10 * SR, np.float32), _greedy()) == []
    assert transcribe(recognizer, rng.normal(0, 1e-4, 5 * SR).astype(np.float32), _greedy()) == []


def _parse_srt_or_vtt(text, vtt):
    lines = text.split("\n")
    if vtt:
        assert lines[0] == "WEBVTT" and lines[1] == ""
        lines = lines[2:]
    cues, sep = [], "." if vtt else ","
    blocks = [b for b in "\n".join(lines).split("\n\n") if b.strip()]
    for i, block in enumerate(blocks, 1):
        idx, times, *body = block.split("\n")
        assert int(idx) == i
        a, arrow, b = times.split(" ")
        assert arrow == "-->"
        cues.append((_parse_time(a, sep), _parse_time(b, sep), " ".join(body)))
    return cues


def _parse_time(text, sep):
    hms, ms = text.split(sep)
    h, m, s = hms.split(":")
    assert len(h) == 2 and len(m) == 2 and len(s) == 2 and len(ms) == 3
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_cli_formats_parse_back(recognizer, long_audio, tiny_model_dir, tmp_path):
    from asr.cli import main

    path = long_audio[0]
    out = tmp_path / "out"
    assert main(["transcribe", "--model", str(tiny_model_dir), str(path), "--format", "all",
                 "--output-dir", str(out), "--beam", "1", "--ctc-weight", "0"]) == 0
    doc = json.loads((out / "long.json").read_text())
    segs = doc["segments"]
    assert segs and doc["summary"]["complete"] and doc["summary"]["segments"] == len(segs)
    assert set(segs[0]) >= {"start", "end", "text", "tokens", "avg_logprob", "guards", "words"}
    srt = _parse_srt_or_vtt((out / "long.srt").read_text(), vtt=False)
    vtt = _parse_srt_or_vtt((out / "long.vtt").read_text(), vtt=True)
    expect = [(pytest.approx(s["start"], abs=1e-3), pytest.approx(s["end"], abs=1e-3), s["text"]) for s in segs]
    assert srt == expect and vtt == expect
    rows = [r.split("\t") for r in (out / "long.tsv").read_text().splitlines()]
    assert rows[0] == ["start", "end", "text", "confidence"]
    assert [(int(a), int(b), t, float(c)) for a, b, t, c in rows[1:]] == [
        (round(s["start"] * 1000), round(s["end"] * 1000), s["text"], pytest.approx(s["confidence"], abs=1e-4))
        for s in segs]
    assert (out / "long.txt").read_text().splitlines() == [s["text"] for s in segs]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_counts_bad_files_and_continues(recognizer, tiny_model_dir, tiny_corpus, tmp_path, capsys):
    from asr.cli import EXIT_PARTIAL, main

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    good = tiny_corpus.utts[0]
    (folder / "sub" / "good.wav").write_bytes(Path(good.audio).read_bytes())
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    (folder / "empty.flac").write_bytes(b"")
    out = tmp_path / "out"
    status = main(["transcribe", "--model", str(tiny_model_dir), str(folder), str(tmp_path / "missing.wav"),
                   "--output-dir", str(out), "--beam", "1", "--ctc-weight", "0"])
    assert status == EXIT_PARTIAL
    err = capsys.readouterr().err
    assert "1 transcribed, 3 failed" in err
    assert (out / "sub" / "good.txt").read_text().strip() == good.text
    failures = (out / "transcribe_failures.tsv").read_text().splitlines()[1:]
    assert sorted(Path(line.split("\t")[0]).name for line in failures) == ["broken.wav", "empty.flac", "missing.wav"]
    assert not (out / "broken.txt").exists()


def test_cli_stdin_streams_text_as_it_arrives(recognizer, tiny_model_dir, long_audio):
    """Text of the first utterances is printed before stdin is closed, and all of it equals what the
    Python API finds in the same audio."""
    import queue
    import threading

    _, audio, _, spans = long_audio
    # Just past min_silence after the 3rd utterance (pauses are >= 0.3 s plus flite's own silences).
    split = int((spans[2][1] + VadConfig().min_silence + 0.1) * SR)
    n_utts = max(k for k, (_, end) in enumerate(spans) if end < 12.0) + 1
    stop = int((spans[n_utts - 1][1] + 0.3) * SR)
    pcm = np.clip(np.round(audio[:stop] * 32768), -32768, 32767).astype("<i2").tobytes()  # exact: 16-bit audio
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "asr", "transcribe", "--model", str(tiny_model_dir), "-",
                             "--beam", "1", "--ctc-weight", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.decode()) for x in proc.stdout], daemon=True).start()
    try:
        proc.stdin.write(pcm[: 2 * split])
        proc.stdin.flush()
        early = [lines.get(timeout=60)]  # stdin is still open: this text was streamed
        proc.stdin.write(pcm[2 * split :])
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    except (BrokenPipeError, queue.Empty):
        proc.kill()
        pytest.fail(f"asr transcribe - stopped early: {proc.stderr.read().decode()[-2000:]}")
    finally:
        proc.kill()
    while not lines.empty():
        early.append(lines.get())
    assert len(early) >= 2
    assert [x.strip() for x in early] == [format_console(s) for s in transcribe(recognizer, audio[:stop], _greedy())]


def test_cli_ctrl_c_keeps_what_is_finished(recognizer, tiny_model_dir, long_audio, tmp_path):
    """SIGINT to ``asr transcribe -`` mid-stream: exit 130, and the outputs hold the finished segments."""
    import select
    import signal

    _, audio, _, spans = long_audio
    split = int((spans[2][1] + VadConfig().min_silence + 0.1) * SR)
    pcm = np.clip(np.round(audio[:split] * 32768), -32768, 32767).astype("<i2").tobytes()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "asr", "transcribe", "--model", str(tiny_model_dir), "-",
                             "--beam", "1", "--ctc-weight", "0", "--format", "json,srt", "--output-dir", str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            # A shell starts background jobs with SIGINT ignored, and the child would inherit
                            # that; a user's interactive Ctrl-C is what this test is about.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.stdin.write(pcm)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no text within 60 s"
        first = proc.stdout.readline().decode().strip().split("] ", 1)[1]  # a segment is done; stdin stays open
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, proc.stderr.read().decode()
    finally:
        proc.kill()
    doc = json.loads((tmp_path / "stdin.json").read_text())
    assert doc["summary"]["complete"] is False
    texts = [seg["text"] for seg in doc["segments"]]
    assert texts and texts[0] == first
    assert [c[2] for c in _parse_srt_or_vtt((tmp_path / "stdin.srt").read_text(), vtt=False)] == texts


def test_interrupt_writes_finished_segments(recognizer, long_audio, tmp_path):
    from asr.transcribe import SegmentWriter, transcribe_stream

    _, audio, _, _ = long_audio

    def blocks():
        yield from iter_array_blocks(audio[: 15 * SR], 1.0, SR)
        raise KeyboardInterrupt

    writers = [SegmentWriter(tmp_path / "x.json", "json"), SegmentWriter(tmp_path / "x.srt", "srt")]
    cfg = TranscribeConfig(batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        transcribe_stream(recognizer, blocks(), "x", writers, _greedy(), cfg, VadConfig())
    doc = json.loads((tmp_path / "x.json").read_text())
    assert doc["summary"]["complete"] is False and len(doc["segments"]) >= 2
    assert len(_parse_srt_or_vtt((tmp_path / "x.srt").read_text(), vtt=False)) == len(doc["segments"])


def test_long_file_memory_stays_bounded(recognizer, tiny_corpus, tmp_path):
    """Python-heap peak of a 10-minute file (speech once a minute) is that of a 1-minute file."""
    from asr.audio import load_audio

    speech = load_audio(tiny_corpus.utts[3].audio)
    minute = np.zeros(60 * SR, np.float32)
    minute[5 * SR : 5 * SR + len(speech)] = speech
    peaks = {}
    for minutes in (1, 10):
        path = tmp_path / f"{minutes}.wav"
        with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
            for _ in range(minutes):
                f.write(minute)
        tracemalloc.start()
        try:
            segments = transcribe(recognizer, path, _greedy())
            peaks[minutes] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(segments) == minutes
    whole = 600 * SR * 4  # bytes of the 10-minute file decoded as float32
    assert peaks[10] < 1.2 * peaks[1] and peaks[10] < whole / 4, peaks
