"""The ASGI app: HTTP upload, WebSocket streaming, health and the browser page, over one Recognizer.

The network layer is thin: each connection parses its messages with :mod:`asr.serve.sessions` and hands
every piece of model work to one bounded :class:`DecodePool`, so the event loop only moves bytes and
a slow decode never stalls another client's socket. All sessions share the one model.

Routes::

    GET  /              the page (asr/serve/static/index.html)
    GET  /static/...    its scripts
    GET  /healthz       {"status": "ready", "model": ..., "sessions": n, ...}
    POST /v1/transcribe multipart upload or raw body; ?format=json|txt|srt|vtt&beam=N&nbest=N
    WS   /v1/stream     start message, binary PCM frames, {"type": "end"}
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from asr.errors import AsrError
from asr.serve.sessions import (
    Admission,
    ProtocolError,
    ServeConfig,
    StreamSession,
    decode_options,
    parse_json,
    parse_query,
    parse_start,
    segment_json,
)

if TYPE_CHECKING:
    from asr.inference import Recognizer

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
FEED_SECONDS = 0.1  # input audio gathered before a decoding-pool call: small frames cost a call each
MAX_TEXT_BYTES = 64 << 10  # a control message is a few dozen bytes
CLOSE_ERROR, CLOSE_INTERNAL = 1008, 1011  # WebSocket close codes: policy violation, server error
MEDIA_TYPES = {"json": "application/json", "txt": "text/plain; charset=utf-8",
               "srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}


class DecodePool:
    """A fixed number of decoding threads shared by all connections, awaited from the event loop."""

    def __init__(self, workers: int, threads: int):
        import torch

        self.workers = workers
        self.busy = 0  # calls submitted and not yet finished (event-loop side count)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="asr-decode",
                                            initializer=torch.set_num_threads, initargs=(threads,))

    @property
    def saturated(self) -> bool:
        return self.busy >= self.workers

    async def run(self, fn, *args):
        self.busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self.busy -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    """The client went away (disconnected, or stopped reading)."""


class Server:
    """Request handlers over one Recognizer, one DecodePool and one Admission counter."""

    def __init__(self, recognizer: Recognizer, cfg: ServeConfig, model_name: str):
        self.recognizer = recognizer
        self.cfg = cfg
        self.model_name = model_name
        self.admission = Admission(cfg.max_sessions)
        self.pool: DecodePool | None = None
        self.ready = False

    # -- HTTP ----------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def healthz(self, request: Request) -> Response:
        body = {"status": "ready" if self.ready else "starting", "model": self.model_name,
                "sample_rate": self.recognizer.sample_rate, "sessions": self.admission.active,
                "max_sessions": self.cfg.max_sessions, "workers": self.cfg.workers,
                "max_upload_bytes": self.cfg.max_upload_bytes}
        return JSONResponse(body, status_code=200 if self.ready else 503)

    async def transcribe(self, request: Request) -> Response:
        try:
            fmt, beam, nbest = parse_query(dict(request.query_params), self.cfg.beam)
        except ProtocolError as e:
            return _error(400, str(e))
        reason = self.admission.enter()
        if reason:
            return _error(503, reason)
        work = Path(tempfile.mkdtemp(prefix="asr-upload-"))
        try:
            path = await self._receive_upload(request, work / "upload")
            return await self._transcribe_file(path, fmt, beam, nbest)
        except _TooLarge:
            return _error(413, f"upload exceeds the limit of {self.cfg.max_upload_bytes} bytes (--max-upload-mb)")
        except ProtocolError as e:
            return _error(400, str(e))
        except ClientDisconnect:
            return _error(400, "the client disconnected during the upload")
        finally:
            self.admission.leave()
            shutil.rmtree(work, ignore_errors=True)

    async def _receive_upload(self, request: Request, dest: Path) -> Path:
        """Write the upload (the first file of a multipart form, or the raw body) to ``dest``."""
        limit = self.cfg.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _TooLarge
        limited = Request(request.scope, _limited_receive(request.receive, limit))
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            await _save_form_file(limited, dest)
        else:
            with open(dest, "wb") as f:
                async for chunk in limited.stream():
                    f.write(chunk)
        if dest.stat().st_size == 0:
            raise ProtocolError("empty upload: send audio as the body or as a multipart file field")
        return dest

    async def _transcribe_file(self, path: Path, fmt: str, beam: int, nbest: int = 1) -> Response:
        from asr.audio import audio_duration
        from asr.transcribe import transcribe

        try:
            duration = await self.pool.run(audio_duration, path)
            segments = await self.pool.run(transcribe, self.recognizer, path, decode_options(beam, nbest))
        except AsrError as e:
            return _error(400, f"upload: {e.reason}")
        return _render(segments, fmt, duration)

    # -- WebSocket -----------------------------------------------------------------------------

    async def stream(self, ws: WebSocket) -> None:
        reason = self.admission.enter()
        if reason:
            await _deny(ws, reason)
            return
        try:
            await ws.accept()
            await _Stream(self, ws).run()
        finally:
            self.admission.leave()


class _Stream:
    """One WebSocket stream: start, frames, end. Protocol errors end it with an error message."""

    def __init__(self, server: Server, ws: WebSocket):
        self.server, self.ws, self.cfg = server, ws, server.cfg
        self.session: StreamSession | None = None
        self.pending = bytearray()

    async def run(self) -> None:
        try:
            self.session = self._open(await self._receive_start())
            await self._send({"type": "ready", "sample_rate": self.session.start.sample_rate,
                              "format": self.session.start.format})
            while True:
                msg = await self._receive()
                if "bytes" in msg and msg["bytes"] is not None:
                    await self._audio(msg["bytes"])
                    continue
                kind = parse_json(_text(msg))["type"]
                if kind != "end":
                    raise ProtocolError(f'unexpected message type "{kind[:40]}" after start (expected: end)')
                await self._end()
                return
        except ProtocolError as e:
            await self._fail(str(e), CLOSE_ERROR)
        except _Gone:
            pass
        except Exception as e:  # one session's failure must not take the server down
            log.exception("stream failed")
            await self._fail(f"internal error: {type(e).__name__}: {e}", CLOSE_INTERNAL)
        finally:
            self.session = None  # drop the session's audio now, not when the socket object dies

    async def _receive_start(self):
        msg = await self._receive()
        if "bytes" in msg and msg["bytes"] is not None:
            raise ProtocolError('binary frame before the start message: send {"type": "start", ...} first')
        return parse_start(parse_json(_text(msg)), self.cfg.beam)

    def _open(self, start) -> StreamSession:
        return StreamSession(self.server.recognizer, start, decode_options(start.beam), self.cfg.partial_interval)

    async def _receive(self) -> dict:
        try:
            msg = await asyncio.wait_for(self.ws.receive(), self.cfg.idle_timeout)
        except asyncio.TimeoutError:
            raise ProtocolError(f"idle for {self.cfg.idle_timeout:g} s: closed (--idle-timeout)") from None
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise _Gone from None
        if msg["type"] == "websocket.disconnect":
            raise _Gone
        return msg

    async def _audio(self, data: bytes) -> None:
        session = self.session
        if len(data) > self.cfg.max_frame_bytes:
            raise ProtocolError(f"binary frame of {len(data)} bytes exceeds the limit of "
                                f"{self.cfg.max_frame_bytes} bytes")
        if session.pcm.seconds_after(len(self.pending) + len(data)) > self.cfg.max_stream_seconds:
            await self._flush()
            for m in await self.server.pool.run(session.finish):
                await self._send(m)
            raise ProtocolError(f"stream exceeds the maximum duration of {self.cfg.max_stream_seconds:g} s "
                                "(--max-stream-seconds)")
        self.pending += data
        if len(self.pending) >= FEED_SECONDS * session.start.sample_rate * session.pcm.width:
            await self._flush()

    async def _flush(self) -> None:
        if not self.pending:
            return
        data, self.pending = bytes(self.pending), bytearray()
        session, pool = self.session, self.server.pool
        for m in await pool.run(session.feed, data):
            await self._send(m)
        # Partials are a courtesy: skipped while the pool is busy, so finals never wait for them.
        if session.partial_due() and not pool.saturated:
            m = await pool.run(session.partial)
            if m is not None:
                await self._send(m)

    async def _end(self) -> None:
        await self._flush()
        session = self.session
        for m in await self.server.pool.run(session.finish):
            await self._send(m)
        dangling = session.pcm.dangling_bytes
        await self._send({"type": "end", "segments": session.finals, "duration": round(session.seconds, 3),
                          **({"dropped_bytes": dangling} if dangling else {})})
        try:
            await self.ws.close(1000)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    async def _send(self, msg: dict) -> None:
        try:
            await asyncio.wait_for(self.ws.send_text(json.dumps(msg)), self.cfg.send_timeout)
        except (asyncio.TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
            raise _Gone from None

    async def _fail(self, message: str, code: int) -> None:
        try:
            await self._send({"type": "error", "message": message})
            await self.ws.close(code, message[:120])
        except (_Gone, WebSocketDisconnect, RuntimeError, OSError):
            pass


def _text(msg: dict) -> str:
    text = msg.get("text")
    if text is None:
        raise ProtocolError("empty frame")
    if len(text) > MAX_TEXT_BYTES:
        raise ProtocolError(f"text message of {len(text)} characters exceeds the limit of {MAX_TEXT_BYTES}")
    return text


async def _deny(ws: WebSocket, reason: str) -> None:
    """Refuse a WebSocket before accepting it: HTTP 503 with the reason, where the server allows it."""
    try:
        await ws.send_denial_response(JSONResponse({"error": reason}, status_code=503))
    except RuntimeError:
        await ws.accept()
        await ws.send_text(json.dumps({"type": "error", "message": reason}))
        await ws.close(1013, reason[:120])


def _limited_receive(receive, limit: int):
    """Wrap an ASGI ``receive`` so that a body longer than ``limit`` bytes raises _TooLarge."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return wrapped


async def _save_form_file(request: Request, dest: Path) -> None:
    from starlette.datastructures import UploadFile

    try:
        form = await request.form(max_files=1, max_fields=16)
    except _TooLarge:
        raise
    except Exception as e:  # the multipart parser's errors are its own types
        raise ProtocolError(f"malformed multipart body ({type(e).__name__}: {e})") from None
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise ProtocolError("multipart body has no file field")
        with open(dest, "wb") as f:
            while chunk := await files[0].read(1 << 20):
                f.write(chunk)
    finally:
        await form.close()


def _error(status: int, reason: str) -> Response:
    return JSONResponse({"error": reason}, status_code=status)


def _render(segments, fmt: str, duration: float) -> Response:
    from asr.transcribe import format_header, format_segment

    if fmt == "json":
        body = {"duration": round(duration, 3), "text": " ".join(s.text for s in segments),
                "segments": [segment_json(i, s) for i, s in enumerate(segments, 1)]}
        return JSONResponse(body)
    text = format_header(fmt) + "".join(format_segment(fmt, i, s) for i, s in enumerate(segments, 1))
    return PlainTextResponse(text, media_type=MEDIA_TYPES[fmt])


def create_app(recognizer: Recognizer, cfg: ServeConfig = ServeConfig(), model_name: str = "") -> Starlette:
    """The ASGI app serving ``recognizer``; its decoding pool lives as long as the app's lifespan."""
    import contextlib

    server = Server(recognizer, cfg, model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.pool = DecodePool(cfg.workers, cfg.threads)
        server.ready = True
        try:
            yield
        finally:
            server.ready = False
            server.pool.close()

    routes = [
        Route("/", server.index),
        Route("/healthz", server.healthz),
        Route("/v1/transcribe", server.transcribe, methods=["POST"]),
        WebSocketRoute("/v1/stream", server.stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app


def serve(model_dir: str | Path, cfg: ServeConfig = ServeConfig(), device: str = "cpu", sock=None) -> None:
    """Load ``model_dir`` once and serve it until interrupted (uvicorn; Ctrl-C stops it).

    ``sock``: an already bound socket (tests pass port 0 and read the port back); else ``cfg.host:port``.
    """
    import socket

    import torch
    import uvicorn

    from asr.inference import Recognizer

    torch.set_num_threads(cfg.threads)
    recognizer = Recognizer.from_dir(model_dir, device)
    app = create_app(recognizer, cfg, Path(model_dir).name)
    if sock is None:
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as e:
            sock.close()
            from asr.errors import ConfigError

            raise ConfigError("--port", f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror})") from None
    sock.listen(2048)  # connections made from now on wait in the backlog until uvicorn accepts them
    host, port = sock.getsockname()[:2]
    print(f"asr serve: {Path(model_dir).name} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        uvicorn.Server(uvicorn_config(app, cfg)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a graceful shutdown: stopping is the normal end
        pass
    print("asr serve: stopped", flush=True)


def uvicorn_config(app: Starlette, cfg: ServeConfig):
    """uvicorn settings of the server. Frames up to 4x ``max_frame_bytes`` reach the app (which answers
    with an error message); larger ones are refused by the WebSocket layer itself (close code 1009)."""
    import uvicorn

    return uvicorn.Config(app, ws="websockets-sansio", ws_max_size=4 * cfg.max_frame_bytes,
                          log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
