"""`asr serve` over real sockets: uvicorn on 127.0.0.1 in a thread, real HTTP and WebSocket clients.

The reference for every stream and upload is the long-file transcriber run offline on the same audio:
the server reuses its segmenting and decoding, so the texts and times must be equal, however the
audio is cut into frames, encoded or paced.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
    import websockets  # noqa: F401
except ImportError as e:  # a missing extra fails in CI and skips elsewhere, with the reason
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip(f"asr[serve] is not installed ({e.name}): pip install -e '.[serve]'", allow_module_level=True)

import serve_helper
from serve_helper import (
    LOOPBACK,
    finals,
    frames,
    health,
    http,
    multipart,
    pcm_bytes,
    receive_all,
    running_server,
    stream,
    wait_for_sessions,
)

# The shared fixtures: the tiny model, speech with pauses, and its offline transcript (the quiet run).
recognizer, speech, baseline = serve_helper.recognizer, serve_helper.speech, serve_helper.baseline
SR = 16000
FRAME = 3200  # bytes: 100 ms of s16le


@pytest.fixture(scope="module")
def srv(recognizer):
    from asr.serve import ServeConfig

    with running_server(recognizer, ServeConfig(max_sessions=16, idle_timeout=10)) as running:
        yield running


def test_healthz_names_the_model_and_is_ready(srv):
    h = health(srv.url)
    assert h["status"] == "ready" and h["model"] == "tiny" and h["sample_rate"] == SR
    assert h["sessions"] == 0


def test_page_and_scripts_are_served(srv):
    status, ctype, body = http("GET", srv.url + "/")
    assert status == 200 and ctype.startswith("text/html") and b"/static/app.js" in body
    for name in ("app.js", "worklet.js", "style.css"):
        assert http("GET", f"{srv.url}/static/{name}")[0] == 200


def test_stream_equals_the_offline_transcriber(srv, speech, baseline):
    msgs = stream(srv.ws_url, frames(pcm_bytes(speech[0]), FRAME))
    assert msgs[0]["type"] == "ready"
    assert finals(msgs) == baseline
    assert msgs[-1]["type"] == "end" and msgs[-1]["segments"] == len(baseline)
    assert [m["segment"] for m in msgs if m["type"] == "final"] == list(range(1, len(baseline) + 1))
    words = [w for m in msgs if m["type"] == "final" for w in m["words"]]
    assert words and all(w["start"] <= w["end"] for w in words)
    assert wait_for_sessions(srv.url, 0) == 0


def test_frames_split_inside_samples_give_the_same_result(srv, speech, baseline):
    data = pcm_bytes(speech[0])
    rng = np.random.default_rng(1)
    cuts = np.cumsum(rng.integers(1, 2 * FRAME, size=len(data) // FRAME + 10) | 1)  # odd sizes
    chunks = [data[a:b] for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(data)]) if a < len(data)]
    assert finals(stream(srv.ws_url, chunks)) == baseline


def test_f32le_frames_give_the_same_result(srv, speech, baseline):
    start = {"type": "start", "sample_rate": SR, "format": "f32le"}
    assert finals(stream(srv.ws_url, frames(pcm_bytes(speech[0], "f32le"), 2 * FRAME), start)) == baseline


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_other_rates_are_resampled(srv, speech, baseline, rate):
    from asr.audio import resample

    audio = resample(speech[0], SR, rate)
    msgs = stream(srv.ws_url, frames(pcm_bytes(audio), FRAME), {"type": "start", "sample_rate": rate})
    texts = [t for t, _, _ in finals(msgs)]
    if rate == 8000:  # half the band is gone: the words may change, the segments may not
        assert len(texts) == len(baseline)
    else:
        assert texts == [t for t, _, _ in baseline]


def test_partials_come_before_finals_and_can_be_turned_off(srv, speech):
    msgs = stream(srv.ws_url, frames(pcm_bytes(speech[0]), FRAME), pace=0.002)
    partials = [(i, m) for i, m in enumerate(msgs) if m["type"] == "partial"]
    assert partials
    for i, m in partials:  # a partial announces the segment whose final comes later
        assert set(m) == {"type", "segment", "start", "text"} and m["text"]
        assert any(f["type"] == "final" and f["segment"] == m["segment"] for f in msgs[i + 1 :])
    start = {"type": "start", "sample_rate": SR, "options": {"partials": False}}
    msgs = stream(srv.ws_url, frames(pcm_bytes(speech[0]), FRAME), start, pace=0.002)
    assert "partial" not in [m["type"] for m in msgs]


# ---------------------------------------------------------------------------------------------
# Uploads.
# ---------------------------------------------------------------------------------------------


def _segments(body: bytes):
    return [(s["text"], s["start"], s["end"]) for s in json.loads(body)["segments"]]


def test_upload_raw_and_multipart_equal_the_offline_transcriber(srv, speech, recognizer):
    from asr.serve.sessions import decode_options
    from asr.transcribe import transcribe

    wav = speech[2].read_bytes()
    offline = [(s.text, s.start, s.end) for s in transcribe(recognizer, speech[2], decode_options(1))]
    status, ctype, body = http("POST", srv.url + "/v1/transcribe", wav, {"Content-Type": "audio/wav"})
    assert status == 200 and ctype == "application/json", body
    assert _segments(body) == offline
    assert json.loads(body)["duration"] == pytest.approx(len(speech[0]) / SR, abs=1e-3)
    form, ctype = multipart("file", "speech.wav", wav)
    status, _, body = http("POST", srv.url + "/v1/transcribe?format=json", form, {"Content-Type": ctype})
    assert status == 200 and _segments(body) == offline


def test_upload_formats_are_the_transcribers_writers(srv, speech, recognizer):
    from asr.serve.sessions import decode_options
    from asr.transcribe import format_header, format_segment, transcribe

    segs = transcribe(recognizer, speech[2], decode_options(1))
    wav = speech[2].read_bytes()
    for fmt, ctype in (("txt", "text/plain"), ("srt", "application/x-subrip"), ("vtt", "text/vtt")):
        status, got_type, body = http("POST", f"{srv.url}/v1/transcribe?format={fmt}", wav)
        assert status == 200 and got_type.startswith(ctype)
        want = format_header(fmt) + "".join(format_segment(fmt, i, s) for i, s in enumerate(segs, 1))
        assert body.decode() == want


def test_upload_beam_option_is_used(srv, speech, recognizer):
    from asr.serve.sessions import decode_options
    from asr.transcribe import transcribe

    offline = [(s.text, s.start, s.end) for s in transcribe(recognizer, speech[2], decode_options(3))]
    status, _, body = http("POST", srv.url + "/v1/transcribe?beam=3", speech[2].read_bytes())
    assert status == 200 and _segments(body) == offline


def test_upload_nbest_lists_alternatives(srv, speech, recognizer):
    from asr.serve.sessions import decode_options
    from asr.transcribe import transcribe

    offline = transcribe(recognizer, speech[2], decode_options(3, 3))
    status, _, body = http("POST", srv.url + "/v1/transcribe?beam=3&nbest=3", speech[2].read_bytes())
    assert status == 200
    segs = json.loads(body)["segments"]
    assert [s["alternatives"] for s in segs] == [s.alternatives for s in offline]
    assert all(1 <= len(s["alternatives"]) <= 3 for s in segs)
    scores = [a["score"] for a in segs[0]["alternatives"]]
    assert scores == sorted(scores, reverse=True)
    status, _, body = http("POST", srv.url + "/v1/transcribe?beam=3", speech[2].read_bytes())
    assert all("alternatives" not in s for s in json.loads(body)["segments"])


@pytest.mark.parametrize("query, reason", [
    ("format=docx", "format must be one of"),
    ("beam=0", "beam must be in"),
    ("beam=x", "beam must be an integer"),
    ("nbest=5&beam=2", "nbest must be in"),
    ("colour=red", "unknown query parameter"),
])
def test_upload_bad_query_is_400_with_the_reason(srv, speech, query, reason):
    status, _, body = http("POST", f"{srv.url}/v1/transcribe?{query}", speech[2].read_bytes())
    assert status == 400 and reason in json.loads(body)["error"]


@pytest.mark.parametrize("payload, reason", [
    (b"", "empty upload"),
    (b"RIFF\x00\x00\x00\x00WAVEjunkjunk" * 10, "upload:"),
    (os.urandom(5000), "upload:"),
])
def test_upload_unreadable_audio_is_400_and_the_server_goes_on(srv, speech, payload, reason):
    status, _, body = http("POST", srv.url + "/v1/transcribe", payload)
    assert status == 400 and reason in json.loads(body)["error"]
    form, ctype = multipart("other", "x.txt", b"")
    status, _, body = http("POST", srv.url + "/v1/transcribe", b"--nope\r\n", {"Content-Type": ctype})
    assert status == 400 and "error" in json.loads(body)
    assert http("POST", srv.url + "/v1/transcribe", speech[2].read_bytes())[0] == 200


def test_oversized_upload_is_413_with_or_without_a_length(recognizer, speech):
    from http.client import HTTPConnection

    from asr.serve import ServeConfig

    wav = speech[2].read_bytes()
    with running_server(recognizer, ServeConfig(max_upload_bytes=len(wav) - 1)) as s:
        status, _, body = http("POST", s.url + "/v1/transcribe", wav)
        assert status == 413 and "exceeds the limit" in json.loads(body)["error"]
        form, ctype = multipart("file", "speech.wav", wav)
        assert http("POST", s.url + "/v1/transcribe", form, {"Content-Type": ctype})[0] == 413
        port = int(s.url.rsplit(":", 1)[1])
        conn = HTTPConnection(LOOPBACK, port, timeout=60)
        conn.request("POST", "/v1/transcribe", body=iter(frames(wav, 4096)), encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 413 and "exceeds the limit" in json.loads(r.read())["error"]
        conn.close()
        assert wait_for_sessions(s.url, 0) == 0
        assert http("POST", s.url + "/v1/transcribe", wav[:1000])[0] == 200  # a short file: still serving


# ---------------------------------------------------------------------------------------------
# Limits.
# ---------------------------------------------------------------------------------------------


def test_past_max_sessions_is_503_with_the_reason(recognizer, speech):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from asr.serve import ServeConfig

    with running_server(recognizer, ServeConfig(max_sessions=2)) as s, contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(s.ws_url)) for _ in range(2)]
        for ws in held:
            ws.send(json.dumps({"type": "start", "sample_rate": SR}))
            assert json.loads(ws.recv(30))["type"] == "ready"
        with pytest.raises(InvalidStatus) as e:
            connect(s.ws_url, open_timeout=30)
        assert e.value.response.status_code == 503
        assert "max-sessions" in json.loads(e.value.response.body)["error"]
        status, _, body = http("POST", s.url + "/v1/transcribe", speech[2].read_bytes())
        assert status == 503 and "max-sessions" in json.loads(body)["error"]
        for ws in held:
            ws.close()
        assert wait_for_sessions(s.url, 0) == 0
        assert http("POST", s.url + "/v1/transcribe", speech[2].read_bytes())[0] == 200


def test_idle_stream_is_closed_with_an_error(recognizer):
    from websockets.sync.client import connect

    from asr.serve import ServeConfig

    with running_server(recognizer, ServeConfig(idle_timeout=0.5)) as s:
        with connect(s.ws_url) as ws:
            ws.send(json.dumps({"type": "start", "sample_rate": SR}))
            ws.send(b"\x00\x00" * 1600)
            msgs = receive_all(ws, 30)
        assert msgs[0]["type"] == "ready" and msgs[-1]["type"] == "error"
        assert "idle" in msgs[-1]["message"]
        with connect(s.ws_url) as ws:  # idle before the start message, too
            msgs = receive_all(ws, 30)
        assert msgs == [{"type": "error", "message": msgs[0]["message"]}] and "idle" in msgs[0]["message"]
        assert wait_for_sessions(s.url, 0) == 0


def test_stream_longer_than_the_limit_gets_its_finals_then_an_error(recognizer, speech, baseline):
    from asr.serve import ServeConfig

    limit = baseline[1][2] + 1.0  # past the second segment's end
    with running_server(recognizer, ServeConfig(max_stream_seconds=limit)) as s:
        msgs = stream(s.ws_url, frames(pcm_bytes(speech[0]), FRAME))
    assert msgs[-1]["type"] == "error" and "maximum duration" in msgs[-1]["message"]
    got = finals(msgs)
    assert got[:2] == baseline[:2] and len(got) < len(baseline)
