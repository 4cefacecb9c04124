// AudioWorklet: microphone audio at the context's rate -> 16 kHz signed 16-bit PCM, posted in 100 ms
// buffers. Resampling is windowed-sinc interpolation with its cut-off below the new Nyquist, so a 48 kHz
// microphone does not alias into the speech band.
const TARGET_RATE = 16000;
const POST_SAMPLES = 1600;

class Pcm16k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / TARGET_RATE;
    this.cut = Math.min(1, 1 / this.ratio) * 0.9; // cut-off as a fraction of the input Nyquist
    this.half = this.ratio === 1 ? 0 : Math.ceil(8 * Math.max(1, this.ratio)); // taps each side
    this.buf = new Float32Array(0);
    this.t = this.half; // input position of the next output sample, within buf
    this.out = new Int16Array(POST_SAMPLES);
    this.n = 0;
    this.port.onmessage = (e) => { if (e.data === "flush") this.flush(); };
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    const merged = new Float32Array(this.buf.length + ch.length);
    merged.set(this.buf);
    merged.set(ch, this.buf.length);
    this.buf = merged;
    while (Math.floor(this.t) + this.half < this.buf.length) {
      this.emit(this.sample(this.t));
      this.t += this.ratio;
    }
    const drop = Math.max(0, Math.floor(this.t) - this.half);
    this.buf = this.buf.slice(drop);
    this.t -= drop;
    return true;
  }

  sample(t) {
    if (this.half === 0) return this.buf[t];
    const i0 = Math.floor(t);
    let acc = 0, norm = 0;
    for (let k = i0 - this.half + 1; k <= i0 + this.half; k++) {
      const d = t - k, x = d * this.cut;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = sinc * (0.5 + 0.5 * Math.cos(Math.PI * d / this.half)); // Hann window
      acc += this.buf[k] * w;
      norm += w;
    }
    return acc / norm;
  }

  emit(v) {
    const s = Math.max(-1, Math.min(1, v));
    this.out[this.n++] = s < 0 ? s * 32768 : s * 32767;
    if (this.n === POST_SAMPLES) this.flush();
  }

  flush() {
    if (this.n === 0) return;
    const full = this.n === POST_SAMPLES ? this.out : this.out.slice(0, this.n);
    this.port.postMessage(full.buffer, [full.buffer]);
    this.out = new Int16Array(POST_SAMPLES);
    this.n = 0;
  }
}

registerProcessor("pcm16k", Pcm16k);
