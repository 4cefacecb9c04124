// The page of `asr serve`: microphone streaming over /v1/stream and file upload to /v1/transcribe.
"use strict";

const $ = (id) => document.getElementById(id);
const RATE = 16000;

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

async function health() {
  try {
    const r = await fetch("/healthz");
    const h = await r.json();
    setStatus($("status"), `model ${h.model || "?"}: ${h.status}, ${h.sessions}/${h.max_sessions} sessions`);
  } catch (e) {
    setStatus($("status"), `server unreachable (${e})`, true);
  }
}

// ---- timestamps and formats (the same text as the server's txt/srt/vtt) ----------------------------

function timestamp(seconds, sep) {
  let ms = Math.max(0, Math.round(seconds * 1000));
  const h = Math.floor(ms / 3600000); ms -= h * 3600000;
  const m = Math.floor(ms / 60000); ms -= m * 60000;
  const s = Math.floor(ms / 1000); ms -= s * 1000;
  const p = (n, w) => String(n).padStart(w, "0");
  return `${p(h, 2)}:${p(m, 2)}:${p(s, 2)}${sep}${p(ms, 3)}`;
}

function oneLine(text) { return text.split(/\s+/).filter(Boolean).join(" "); }

function formatSegments(segments, fmt) {
  if (fmt === "txt") return segments.map((s) => oneLine(s.text) + "\n").join("");
  const sep = fmt === "srt" ? "," : ".";
  const body = segments.map((s, i) =>
    `${i + 1}\n${timestamp(s.start, sep)} --> ${timestamp(s.end, sep)}\n${oneLine(s.text)}\n\n`).join("");
  return (fmt === "vtt" ? "WEBVTT\n\n" : "") + body;
}

function segmentLine(seg) {
  const div = document.createElement("div");
  div.className = "final";
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${seg.start.toFixed(2)}–${seg.end.toFixed(2)}`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = seg.text;
  div.append(time, text);
  return div;
}

// ---- microphone -------------------------------------------------------------------------------------

let live = null; // {ws, ctx, stream, node}

async function startMic() {
  const button = $("mic");
  button.disabled = true;
  $("finals").textContent = "";
  $("partial").textContent = "";
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream`);
  ws.binaryType = "arraybuffer";
  live = { ws, ctx: null, stream: null, node: null };
  ws.onmessage = (e) => onStreamMessage(JSON.parse(e.data));
  ws.onclose = (e) => { if (live && live.ws === ws) stopAudio(); if (e.code !== 1000 && e.reason) setStatus($("status"), e.reason, true); };
  ws.onerror = () => setStatus($("status"), "WebSocket error", true);
  await new Promise((resolve, reject) => { ws.onopen = resolve; setTimeout(() => reject(new Error("timeout")), 10000); });
  ws.send(JSON.stringify({ type: "start", sample_rate: RATE, format: "s16le", options: { partials: true } }));
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule("/static/worklet.js");
    const source = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, "pcm16k");
    node.port.onmessage = (e) => { if (ws.readyState === WebSocket.OPEN) ws.send(e.data); };
    const mute = ctx.createGain();
    mute.gain.value = 0; // keeps the graph pulled without playing the microphone back
    source.connect(node).connect(mute).connect(ctx.destination);
    await ctx.resume();
    Object.assign(live, { ctx, stream, node });
    button.textContent = "Stop";
    button.classList.add("on");
    setStatus($("status"), `streaming (microphone at ${ctx.sampleRate} Hz, sent at ${RATE} Hz)`);
  } catch (e) {
    setStatus($("status"), `microphone unavailable: ${e.message || e}`, true);
    ws.close();
    live = null;
  }
  button.disabled = false;
}

function stopAudio() {
  if (!live) return;
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  if (live.ctx) live.ctx.close();
  live.ctx = live.stream = null;
  $("mic").textContent = "Start microphone";
  $("mic").classList.remove("on");
}

async function stopMic() {
  if (!live) return;
  const { ws, node } = live;
  if (node) node.port.postMessage("flush");
  await new Promise((r) => setTimeout(r, 50)); // let the last buffer arrive from the worklet
  stopAudio();
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
}

function onStreamMessage(msg) {
  if (msg.type === "partial") {
    $("partial").textContent = msg.text;
  } else if (msg.type === "final") {
    $("partial").textContent = "";
    $("finals").append(segmentLine(msg));
  } else if (msg.type === "error") {
    setStatus($("status"), msg.message, true);
  } else if (msg.type === "end") {
    setStatus($("status"), `done: ${msg.segments} segment(s), ${msg.duration.toFixed(1)} s of audio`);
    live = null;
  }
}

$("mic").addEventListener("click", () => (live && live.ctx ? stopMic() : startMic()));

// ---- files ------------------------------------------------------------------------------------------

async function transcribeFile(file) {
  const status = $("file-status");
  setStatus(status, `transcribing ${file.name}…`);
  $("file-text").textContent = "";
  $("downloads").hidden = true;
  const form = new FormData();
  form.append("file", file, file.name);
  let body;
  try {
    const r = await fetch("/v1/transcribe?format=json", { method: "POST", body: form });
    body = await r.json();
    if (!r.ok) throw new Error(`${r.status}: ${body.error}`);
  } catch (e) {
    setStatus(status, `${file.name}: ${e.message || e}`, true);
    return;
  }
  body.segments.forEach((s) => $("file-text").append(segmentLine(s)));
  const stem = file.name.replace(/\.[^.]*$/, "");
  for (const fmt of ["txt", "srt", "vtt"]) {
    const link = $(`dl-${fmt}`);
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([formatSegments(body.segments, fmt)], { type: "text/plain" }));
    link.download = `${stem}.${fmt}`;
  }
  $("downloads").hidden = false;
  setStatus(status, `${file.name}: ${body.segments.length} segment(s), ${body.duration.toFixed(1)} s`);
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) transcribeFile(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => { if (e.target.files.length) transcribeFile(e.target.files[0]); });

health();
