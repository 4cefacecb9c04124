"""A real `asr serve` on loopback for tests and the benchmark: uvicorn in a thread, clients over TCP.

Only 127.0.0.1 is ever used; the port is picked by the kernel (port 0).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

LOOPBACK = "127.0.0.1"
SR = 16000


@dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    app: object

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:] + "/v1/stream"

    @property
    def server(self):
        return self.app.state.server


@contextlib.contextmanager
def running_server(recognizer, cfg=None, model_name: str = "tiny") -> Iterator[Running]:
    """Serve ``recognizer`` on 127.0.0.1:<free port> in a background thread until the block ends."""
    import uvicorn

    from asr.serve import ServeConfig
    from asr.serve.app import create_app, uvicorn_config

    cfg = cfg or ServeConfig()
    app = create_app(recognizer, cfg, model_name)
    server = uvicorn.Server(uvicorn_config(app, cfg))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield Running(f"http://{LOOPBACK}:{port}", app)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def http(method: str, url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 120):
    """One HTTP request -> (status, content type, body bytes); error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


def multipart(field: str, filename: str, payload: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one file -> (body, content type)."""
    boundary = "asr-test-boundary-7d1f"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + payload + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def pcm_bytes(audio: np.ndarray, fmt: str = "s16le") -> bytes:
    """float32 (samples,) in [-1, 1] -> raw s16le or f32le bytes."""
    if fmt == "f32le":
        return np.asarray(audio, dtype="<f4").tobytes()
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()


def frames(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def stream(ws_url: str, chunks: list[bytes], start: dict | None = None, pace: float = 0.0,
           timeout: float = 120) -> list[dict]:
    """Send start, the binary ``chunks`` (``pace`` seconds apart), end; return every message received."""
    from websockets.sync.client import connect

    start = start or {"type": "start", "sample_rate": 16000, "format": "s16le"}
    out = []
    with connect(ws_url, open_timeout=30, close_timeout=10, max_size=None) as ws:
        ws.send(json.dumps(start))
        out.append(json.loads(ws.recv(timeout)))
        for chunk in chunks:
            ws.send(chunk)
            if pace:
                time.sleep(pace)
        ws.send(json.dumps({"type": "end"}))
        out += receive_all(ws, timeout)
    return out


def receive_all(ws, timeout: float = 120) -> list[dict]:
    """Messages until the server closes the connection."""
    from websockets.exceptions import ConnectionClosed

    out = []
    try:
        while True:
            out.append(json.loads(ws.recv(timeout)))
    except ConnectionClosed:
        pass
    return out


def finals(messages: list[dict]) -> list[tuple[str, float, float]]:
    return [(m["text"], m["start"], m["end"]) for m in messages if m["type"] == "final"]


def health(url: str) -> dict:
    status, _, body = http("GET", url + "/healthz", timeout=30)
    assert status == 200, body
    return json.loads(body)


def wait_for_sessions(url: str, n: int, timeout: float = 20) -> int:
    """Poll /healthz until ``sessions == n`` (or the timeout); returns the last count."""
    deadline = time.monotonic() + timeout
    while True:
        active = health(url)["sessions"]
        if active == n or time.monotonic() > deadline:
            return active
        time.sleep(0.05)


# Fixtures shared by the test_serve* modules (imported there by name).


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir):
    import torch

    import asr

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield asr.load_model(tiny_model_dir)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def speech(tiny_corpus, tmp_path_factory):
    """Six tiny-corpus utterances joined by pauses: (audio (samples,), texts, wav path)."""
    import soundfile as sf

    from asr.audio import load_audio

    rng = np.random.default_rng(0)
    parts, texts = [np.zeros(int(0.3 * SR), np.float32)], []
    for u in tiny_corpus.utts[:6]:
        parts += [load_audio(u.audio), np.zeros(int(rng.uniform(0.6, 1.2) * SR), np.float32)]
        texts.append(u.text)
    audio = np.concatenate(parts)
    path = tmp_path_factory.mktemp("serve") / "speech.wav"
    sf.write(path, audio, SR, subtype="PCM_16")
    audio = sf.read(path, dtype="float32")[0]  # exactly what s16le frames carry
    return audio, texts, path


@pytest.fixture(scope="module")
def baseline(recognizer, speech):
    """The quiet run: the offline long-file transcriber on the same audio, greedy, decoded one by one."""
    from asr.serve.sessions import decode_options
    from asr.transcribe import TranscribeConfig, transcribe

    segs = transcribe(recognizer, speech[0], decode_options(1), TranscribeConfig(batch_size=1))
    assert segs, "the tiny model recognises nothing in the test audio"
    return [(s.text, s.start, s.end) for s in segs]
