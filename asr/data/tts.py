"""Text-to-speech engines of the synthetic corpus: the voice catalogue, flite and espeak-ng.

A voice is spoken by a subprocess whose WAV output is piped through memory. The catalogue holds only
Debian's voices (packages flite and espeak-ng); Festival's voices are reserved for evaluation and are
deliberately absent.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from asr.errors import DataError

# Every flite voice Debian ships but awb_time (a limited-domain voice that can only say the time).
# kal is the 8 kHz diphone voice: band-limited to 4 kHz, a distinct channel as well as a distinct voice.
FLITE_VOICES = {"kal16": "M", "awb": "M", "rms": "M", "slt": "F", "kal": "M"}
# espeak-ng's English accents (gmw/); the mbrola voices need packages Debian does not install.
ESPEAK_VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                 "en-gb-x-gbcwmd", "en-us-nyc")
# espeak-ng voice variants (formant sets, breathiness, pitch range, the klatt synthesiser), with the sex
# they model; left out: whispers, robots and effects voices (croak, Demonic, fast, robosoft*, ...) that
# no human test speaker resembles.
ESPEAK_FEMALE = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda",
                 "grandma", "linda", "steph", "steph2", "steph3")
ESPEAK_MALE = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt3", "klatt4",
               "klatt5", "klatt6", "Alex", "Andy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo",
               "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Storm", "adam", "announcer",
               "antonio", "benjamin", "boris", "caleb", "david", "ed", "edward", "edward2", "grandpa",
               "gustave", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "marcelo", "max",
               "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
               "sandro", "travis", "victor", "zac")
ESPEAK_VARIANTS = {**{v: "M" for v in ESPEAK_MALE}, **{v: "F" for v in ESPEAK_FEMALE}}
DEBIAN_PACKAGES = {"flite": "flite", "espeak-ng": "espeak-ng"}


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a TTS voice with a fixed pitch, rate and formant scale.

    ``formant`` scales every frequency of the voice (formants and pitch, as a shorter or longer vocal
    tract would): the engine's output is read at ``formant`` times its rate, with the speaking rate
    pre-compensated so that the duration stays that of ``rate``.
    """

    id: int
    sex: str
    subset: str
    engine: str  # "flite" | "espeak-ng"
    voice: str
    pitch: int  # flite: mean F0 in Hz; espeak-ng: -p 0..99
    rate: float  # flite: duration stretch (>1 slower); espeak-ng: words per minute
    formant: float = 1.0

    @property
    def name(self) -> str:
        base = f"{self.engine} {self.voice} pitch {self.pitch} rate {self.rate:g}"
        return base if self.formant == 1.0 else f"{base} formant {self.formant:g}"


def check_tools(engines: set[str]) -> None:
    """Raise DataError naming the Debian packages to install if a TTS engine is missing."""
    missing = sorted(DEBIAN_PACKAGES[e] for e in engines if shutil.which(e) is None)
    if missing:
        pkgs = " ".join(missing)
        raise DataError(pkgs, f"text-to-speech not installed; install the Debian package(s) {pkgs}: "
                              f"sudo apt-get install {pkgs}")


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode 16-bit mono PCM WAV bytes from a TTS pipe.

    espeak-ng writes 0x7fffffff as the chunk sizes when streaming, so the data chunk is taken to
    run to the end of the bytes instead of trusting its size.

    Returns samples (n,) int16 and the sample rate.
    """
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("TTS output is not a WAV stream")
    pos = 12
    rate = 0
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag == b"fmt ":
            channels = int.from_bytes(data[pos + 10:pos + 12], "little")
            rate = int.from_bytes(data[pos + 12:pos + 16], "little")
            bits = int.from_bytes(data[pos + 22:pos + 24], "little")
            if channels != 1 or bits != 16:
                raise ValueError(f"TTS output is {channels} channels, {bits} bits; expected mono 16-bit")
        elif tag == b"data":
            body = data[pos + 8:]
            body = body[: len(body) - len(body) % 2]
            return np.frombuffer(body, dtype="<i2"), rate
        pos += 8 + size + size % 2
    raise ValueError("TTS output has no data chunk")


def tts(text: str, speaker: Speaker) -> tuple[np.ndarray, float]:
    """Speak ``text`` with ``speaker``'s voice, piping the WAV through memory.

    Returns samples (n,) int16 and the rate to read them at: the engine's rate (flite 16 kHz or 8 kHz,
    espeak-ng 22050 Hz) times ``speaker.formant``. Raises RuntimeError when the engine fails.
    """
    # Lower case: both engines spell out some all-capital words as acronyms.
    text = text.lower()
    k = speaker.formant
    if speaker.engine == "flite":
        # Read k times faster, so spoken k times slower; the pitch target is divided by k for the same reason.
        cmd = ["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={speaker.rate * k:g}",
               "--setf", f"int_f0_target_mean={speaker.pitch / k:g}", "-t", text, "-o", "/dev/stdout"]
        stdin = None
    else:
        cmd = ["espeak-ng", "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(int(speaker.rate / k)),
               "--stdout"]
        stdin = text.encode()
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{speaker.engine} exited with {proc.returncode}: {err[-1] if err else ''}")
    samples, rate = parse_wav(proc.stdout)
    if samples.size == 0:
        raise RuntimeError(f"{speaker.engine} produced no audio")
    return samples, rate * k
