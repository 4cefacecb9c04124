"""`asr serve` under bad input: each protocol error gets one JSON error message and a closed stream, the
server stays up, and a clean stream running beside the faults gives exactly the quiet run's result.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

try:
    import websockets  # noqa: F401
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError as e:
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip(f"asr[serve] / hypothesis not installed ({e.name})", allow_module_level=True)

import serve_helper
from serve_helper import (
    LOOPBACK,
    finals,
    frames,
    health,
    http,
    pcm_bytes,
    receive_all,
    running_server,
    stream,
)

recognizer, speech, baseline = serve_helper.recognizer, serve_helper.speech, serve_helper.baseline
SR = 16000
FRAME = 3200
MAX_FRAME = 64 << 10
KINDS = {"ready", "partial", "final", "error", "end"}


@pytest.fixture(scope="module")
def srv(recognizer):
    from asr.serve import ServeConfig

    with running_server(recognizer, ServeConfig(max_sessions=64, idle_timeout=5, max_frame_bytes=MAX_FRAME)) as s:
        yield s


def _exchange(url: str, messages: list, timeout: float = 30):
    """Send ``messages`` (str: text frame, bytes: binary frame), stop when the server closes; return
    (replies, close code)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(url, open_timeout=30, max_size=None) as ws:
        try:
            for m in messages:
                ws.send(m)
        except ConnectionClosed:
            pass
        replies = receive_all(ws, timeout)
    return replies, ws.close_code


START = json.dumps({"type": "start", "sample_rate": SR})


@pytest.mark.parametrize("messages, reason", [
    (["{not json"], "malformed JSON"),
    (["[1, 2]"], "must be a JSON object"),
    (['{"sample_rate": 16000}'], 'needs a string "type"'),
    ([b"\x00\x01\x02\x03"], "binary frame before the start message"),
    (['{"type": "hello"}'], 'expected {"type": "start"} first'),
    (['{"type": "end"}'], 'expected {"type": "start"} first'),
    (['{"type": "start"}'], "sample_rate must be an integer"),
    (['{"type": "start", "sample_rate": 0}'], "sample_rate must be an integer in 8000..192000"),
    (['{"type": "start", "sample_rate": 7999}'], "sample_rate"),
    (['{"type": "start", "sample_rate": 16000.5}'], "sample_rate"),
    (['{"type": "start", "sample_rate": "16000"}'], "sample_rate"),
    (['{"type": "start", "sample_rate": true}'], "sample_rate"),
    (['{"type": "start", "sample_rate": 1000000000}'], "sample_rate"),
    (['{"type": "start", "sample_rate": 16000, "format": "mp3"}'], "format must be one of"),
    (['{"type": "start", "sample_rate": 16000, "options": {"beam": 0}}'], "options.beam"),
    (['{"type": "start", "sample_rate": 16000, "options": {"lm": 1}}'], "unknown option"),
    (['{"type": "start", "sample_rate": 16000, "options": []}'], "options must be a JSON object"),
    (['{"type": "start", "sample_rate": 16000, "colour": 1}'], "unknown start field"),
    ([START, '{"type": "pause"}'], 'unexpected message type "pause"'),
    ([START, START], 'unexpected message type "start"'),
    ([START, b"\x00" * 3200, "{oops"], "malformed JSON"),
    ([START, b"\x00" * (MAX_FRAME + 2)], "exceeds the limit"),
    (["x" * 70000], "exceeds the limit"),
    (["[" * 100000], "exceeds the limit"),
    (["[" * 50000], "malformed JSON"),
])
def test_protocol_error_is_one_json_message_then_close(srv, messages, reason):
    replies, code = _exchange(srv.ws_url, messages)
    assert replies[-1]["type"] == "error" and reason in replies[-1]["message"], replies
    assert [m["type"] for m in replies[:-1]] in ([], ["ready"])
    assert code == 1008
    assert health(srv.url)["status"] == "ready"


def test_a_frame_far_over_the_limit_is_refused_by_the_websocket_layer(srv):
    replies, code = _exchange(srv.ws_url, [START, b"\x00" * (4 * MAX_FRAME + 1)])
    assert code == 1009 and [m["type"] for m in replies] in (["ready"], [])
    assert health(srv.url)["sessions"] == 0 or serve_helper.wait_for_sessions(srv.url, 0) == 0


def _clean_stream_beside(srv, speech, fault) -> list:
    """Run a clean stream in a thread while ``fault()`` runs here; return the clean stream's finals."""
    result = {}

    def clean():
        result["msgs"] = stream(srv.ws_url, frames(pcm_bytes(speech[0]), FRAME), pace=0.003)

    t = threading.Thread(target=clean)
    t.start()
    fault()
    t.join(120)
    return finals(result["msgs"])


def test_abrupt_disconnects_free_their_sessions(srv, speech, baseline):
    from websockets.sync.client import connect

    data = pcm_bytes(speech[0])

    def fault():
        for i in range(8):
            with connect(srv.ws_url) as ws:
                ws.send(START)
                for chunk in frames(data[: len(data) // 2 + 7 * i], FRAME):
                    ws.send(chunk)
                ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the TCP connection just ends
                ws.socket.close()
        for _ in range(4):  # and connections dropped before the start message
            s = socket.create_connection((LOOPBACK, int(srv.url.rsplit(":", 1)[1])))
            s.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            s.close()

    assert _clean_stream_beside(srv, speech, fault) == baseline
    assert serve_helper.wait_for_sessions(srv.url, 0) == 0


def test_slow_reader_gets_everything_and_holds_no_one_up(srv, speech, baseline):
    from websockets.sync.client import connect

    data = pcm_bytes(speech[0])
    got = {}

    def fault():
        with connect(srv.ws_url, max_size=None) as ws:
            ws.send(START)
            for chunk in frames(data, FRAME):
                ws.send(chunk)
            ws.send(json.dumps({"type": "end"}))
            time.sleep(3)  # reads nothing while the server decodes and the clean stream runs
            got["msgs"] = receive_all(ws, 60)

    assert _clean_stream_beside(srv, speech, fault) == baseline
    assert finals(got["msgs"][1:]) == baseline


def test_stuck_reader_is_dropped_after_the_send_timeout(recognizer, speech):
    from asr.serve import ServeConfig
    from asr.serve.app import _Stream

    with running_server(recognizer, ServeConfig(send_timeout=0.5)) as s:
        # A client whose socket never drains: make the server's send hang as a full TCP buffer would.
        original = _Stream._send

        async def never(self, msg):
            import asyncio

            if msg["type"] == "final":
                self.ws.send_text = lambda text: asyncio.sleep(3600)
            return await original(self, msg)

        _Stream._send = never
        try:
            from websockets.sync.client import connect

            with connect(s.ws_url) as ws:
                ws.send(START)
                for chunk in frames(pcm_bytes(speech[0]), FRAME):
                    ws.send(chunk)
                assert serve_helper.wait_for_sessions(s.url, 0, timeout=30) == 0
        finally:
            _Stream._send = original


# ---------------------------------------------------------------------------------------------
# Random protocol traffic.
# ---------------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_start = st.fixed_dictionaries(
    {"type": st.just("start"), "sample_rate": st.sampled_from([16000, 8000, 48000, 0, 7999, "16000", 16000.0])},
    optional={"format": st.sampled_from(["s16le", "f32le", "u8", 3]),
              "options": st.fixed_dictionaries({}, optional={"beam": st.integers(-1, 70),
                                                             "partials": st.booleans() | st.none()})},
)
_message = st.one_of(
    _start.map(json.dumps),
    st.just('{"type": "end"}'),
    st.builds(lambda k: json.dumps({"type": k}), st.text(max_size=6)),
    _json_values.map(json.dumps),
    st.text(max_size=30),
    st.binary(max_size=700),
    st.integers(0, 40).map(lambda n: b"\x01\x80" * n * 100),  # speech-sized frames of a loud square
)


@settings(max_examples=250, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(_message, min_size=1, max_size=16))
def test_random_protocol_traffic_gets_well_formed_answers(srv, messages):
    replies, code = _exchange(srv.ws_url, messages)
    kinds = [m["type"] for m in replies]
    assert set(kinds) <= KINDS, replies
    assert "error" not in kinds[:-1]  # an error is the last word
    if kinds and kinds[-1] == "error":
        assert code == 1008 and replies[-1]["message"]
    for m in replies:
        if m["type"] in ("final", "partial"):
            assert isinstance(m["text"], str) and m["segment"] >= 1


def test_after_the_random_traffic_results_equal_the_quiet_run(srv, speech, baseline):
    assert serve_helper.wait_for_sessions(srv.url, 0) == 0
    assert finals(stream(srv.ws_url, frames(pcm_bytes(speech[0]), FRAME))) == baseline


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------


def test_cli_serves_until_ctrl_c(tiny_model_dir, speech, baseline):
    proc = subprocess.Popen([sys.executable, "-m", "asr", "serve", "--model", str(tiny_model_dir), "--port", "0",
                             "--max-sessions", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert "asr serve:" in line and f"http://{LOOPBACK}:" in line, line + proc.stderr.read()
        url = line.split("http://")[1].split("/")[0]
        url = f"http://{url}"  # listening already: the first request waits in the backlog
        assert health(url)["max_sessions"] == 3
        status, _, body = http("POST", url + "/v1/transcribe?format=txt", speech[2].read_bytes())
        assert status == 200 and body.decode().splitlines() == [t for t, _, _ in baseline]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("args, reason", [
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
    (["--port", "70000"], "port"),
])
def test_cli_bad_arguments_are_one_line_errors(tiny_model_dir, args, reason):
    argv = [sys.executable, "-m", "asr", "serve", "--model", str(tiny_model_dir), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("asr: error:") and reason in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
