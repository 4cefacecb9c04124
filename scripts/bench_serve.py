"""`asr serve` under load: concurrent real-time streams and uploads per second, on loopback.

The server runs as ``python -m asr serve --port 0`` in its own process; the clients share one asyncio
loop here. Each stream sends ``--stream-seconds`` of utterances joined by 1 s pauses, in 100 ms frames at
real-time pace. Latency of a final = its arrival - (stream start + the segment's end of speech). Every
level's transcripts are compared with a quiet lone stream's (``identical_to_quiet``). A level of N
streams passes when every stream got its end message within 2 s of its last frame and the p95
latency is <= ``--max-p95`` s. The ladder stops at the first level that fails; the largest passing N is
reported, then uploads per second of one stream-sized WAV (``--upload-concurrency`` at a time).

    python scripts/benchmark.py serve --model recipes/mini/exp/default/final --max-streams 32
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 16000
FRAME_SECONDS = 0.1
REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=Path, default=REPO / "recipes/mini/exp/default/final", help="model folder")
    parser.add_argument("--levels", default="1,2,4,8,12,16,20,24,32", help="stream counts tried, in order")
    parser.add_argument("--max-streams", type=int, default=32, help="stop the ladder here")
    parser.add_argument("--stream-seconds", type=float, default=20.0)
    parser.add_argument("--max-p95", type=float, default=1.0, help="p95 final latency a level may have (s)")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads of the server")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--uploads", type=int, default=16, help="uploads timed")
    parser.add_argument("--upload-concurrency", type=int, default=4)
    parser.add_argument("--corpus", type=Path, default=None, help="folder of WAV utterances (default: flite)")
    parser.add_argument("--seed", type=int, default=0)


def _stream_audio(pool: list[np.ndarray], seconds: float, rng) -> np.ndarray:
    parts, total = [np.zeros(int(0.5 * SR), np.float32)], 0.5
    while total < seconds:
        wave = pool[rng.integers(len(pool))]
        parts += [wave, np.zeros(SR, np.float32)]
        total += len(wave) / SR + 1.0
    return np.concatenate(parts)


def _start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "asr", "serve", "--model", str(args.model), "--host", "127.0.0.1", "--port", "0",
           "--workers", str(args.workers), "--beam", str(args.beam), "--max-sessions", str(args.max_streams + 8)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"bench_serve: the server did not start: {line!r}")
    return proc, "http://" + line.split("http://")[1].split("/")[0]


async def _one_stream(ws_url: str, pcm: bytes, delay: float) -> dict:
    import websockets

    await asyncio.sleep(delay)
    frame = int(FRAME_SECONDS * SR) * 2
    latencies: list[float] = []
    texts: list[str] = []
    async with websockets.connect(ws_url, max_size=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SR, "format": "s16le",
                                  "options": {"partials": True}}))
        json.loads(await ws.recv())
        t0 = time.perf_counter()
        done = asyncio.get_running_loop().create_future()

        async def reader():
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "final":
                    latencies.append(time.perf_counter() - (t0 + msg["end"]))
                    texts.append(msg["text"])
                elif msg["type"] in ("end", "error"):
                    done.set_result(msg)
                    return

        task = asyncio.create_task(reader())
        for i in range(0, len(pcm), frame):
            await asyncio.sleep(max(0.0, t0 + (i // 2) / SR - time.perf_counter()))
            await ws.send(pcm[i : i + frame])
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "end"}))
        end = await asyncio.wait_for(done, 120)
        await task
    return {"latencies": latencies, "text": " ".join(texts), "tail": time.perf_counter() - sent, "ok": end["type"] == "end",
            "send_lag": sent - (t0 + len(pcm) / 2 / SR)}


async def _level(ws_url: str, pcm: bytes, n: int) -> dict:
    runs = await asyncio.gather(*[_one_stream(ws_url, pcm, i * 0.37 % 1.0) for i in range(n)])
    lat = np.array([x for r in runs for x in r["latencies"]]) if any(r["latencies"] for r in runs) else np.zeros(1)
    return {"streams": n, "finals": int(sum(len(r["latencies"]) for r in runs)),
            "p50": round(float(np.percentile(lat, 50)), 3), "p95": round(float(np.percentile(lat, 95)), 3),
            "max_tail": round(max(r["tail"] for r in runs), 3), "max_send_lag": round(max(r["send_lag"] for r in runs), 3),
            "all_ended": all(r["ok"] for r in runs), "texts": [r["text"] for r in runs]}


def _uploads(url: str, wav: bytes, count: int, concurrency: int) -> float:
    from concurrent.futures import ThreadPoolExecutor
    from urllib.request import Request, urlopen

    def post(_):
        with urlopen(Request(url + "/v1/transcribe?format=txt", data=wav, method="POST"), timeout=600) as r:
            return r.status

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        statuses = list(ex.map(post, range(count)))
    if any(s != 200 for s in statuses):
        raise SystemExit(f"bench_serve: uploads failed: {statuses}")
    return count / (time.perf_counter() - t)


def run(args) -> dict:
    import soundfile as sf
    from bench_transcribe import _utterance_pool

    if not (args.model / "model.pt").is_file():
        raise SystemExit(f"bench_serve: no model at {args.model} (train one, or pass --model DIR)")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as work:
        audio = _stream_audio(_utterance_pool(args.corpus, Path(work)), args.stream_seconds, rng)
    pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="PCM_16")
    proc, url = _start_server(args)
    results, best = [], 0
    try:
        # Every stream sends the same audio, so under load each must get a quiet lone stream's transcript.
        quiet = asyncio.run(_level("ws" + url[4:] + "/v1/stream", pcm, 1))["texts"][0]
        print(f"quiet single stream: {quiet[:100]!r}{'...' if len(quiet) > 100 else ''}", flush=True)
        for n in [int(x) for x in args.levels.split(",") if int(x) <= args.max_streams]:
            r = asyncio.run(_level("ws" + url[4:] + "/v1/stream", pcm, n))
            texts = r.pop("texts")
            r["identical_to_quiet"] = f"{sum(t == quiet for t in texts)}/{len(texts)}"
            r["keeps_up"] = r["all_ended"] and r["p95"] <= args.max_p95 and r["max_tail"] <= 2.0
            results.append(r)
            print(json.dumps(r), flush=True)
            if not r["keeps_up"]:
                break
            best = n
        ups = _uploads(url, buf.getvalue(), args.uploads, args.upload_concurrency)
    finally:
        proc.terminate()
        proc.wait(30)
    out = {"model": str(args.model), "stream_seconds": round(len(audio) / SR, 1), "workers": args.workers,
           "beam": args.beam, "quiet_transcript": quiet, "max_realtime_streams": best, "levels": results,
           "uploads_per_s": round(ups, 2), "upload_audio_x_realtime": round(ups * len(audio) / SR, 1)}
    print(f"largest N keeping up (p95 final latency <= {args.max_p95} s): {best}; "
          f"uploads: {out['uploads_per_s']}/s ({out['upload_audio_x_realtime']}x real time)")
    return out
