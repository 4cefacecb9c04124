"""Long-file transcription runs in bounded memory: the peak RSS of an `asr transcribe` process does not grow
with the file's length (README: 30 min vs 1 min within 1.2x). Measured as the operating system sees it,
ru_maxrss of the process itself; tracemalloc would miss torch's tensors.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.slow

SAMPLE_RATE = 16000
# Runs `asr transcribe` in this process, then prints its own peak RSS (Linux: KiB).
MEASURE = ("import resource, sys; from asr.cli import main; status = main(sys.argv[1:]); "
           "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(status)")


def _long_file(path, utts, seconds: float) -> int:
    """The corpus's utterances, each followed by 0.6 s of silence, repeated to ``seconds``; written in
    pieces so this process never holds the whole file. Returns the number of utterances written."""
    pause = np.zeros(int(0.6 * SAMPLE_RATE), dtype=np.float32)
    waves = [sf.read(u.audio, dtype="float32")[0] for u in utts]
    total, count = 0, 0
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        while total < seconds * SAMPLE_RATE:
            wave = waves[count % len(waves)]
            f.write(wave)
            f.write(pause)
            total += wave.size + pause.size
            count += 1
    return count


def _peak_rss_mb(model_dir, audio, out_dir) -> float:
    r = subprocess.run([sys.executable, "-c", MEASURE, "transcribe", "--model", str(model_dir), str(audio),
                        "--format", "txt", "--output-dir", str(out_dir)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(line for line in r.stdout.splitlines() if line.startswith("MAXRSS "))
    return int(line.split()[1]) / 1024


def test_peak_rss_does_not_grow_with_the_file(tiny_corpus, tiny_model_dir, tmp_path):
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    _long_file(short, tiny_corpus.utts, 60)
    n_long = _long_file(long, tiny_corpus.utts, 600)
    rss_short = _peak_rss_mb(tiny_model_dir, short, tmp_path / "out")
    rss_long = _peak_rss_mb(tiny_model_dir, long, tmp_path / "out")
    # The 10-minute file is 9.6 M samples: read whole it would add 37 MB as float32 (73 MB as float64).
    assert rss_long - rss_short < 25, (rss_short, rss_long)
    assert rss_long / rss_short < 1.2
    # It really transcribed the whole file: most utterances came out as words.
    words = (tmp_path / "out" / "long.txt").read_text().split()
    assert len(words) > n_long, (len(words), n_long)
