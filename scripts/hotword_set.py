"""Build an evaluation set for hotwords: test utterances with one word the model never heard in training.

    python scripts/hotword_set.py --manifest data/manifests/test.jsonl --speakers data/corpus/SPEAKERS.TXT \
        --train data/manifests/train.jsonl --out data/hotword-test [--words RIVER,GARDEN,...] [--limit 200]

Each utterance of ``--manifest`` keeps its transcript with one word put in at a random place: a word
absent from the training transcripts (``--words``, or a default list of common English words checked
against ``--train``). It is spoken again by the same synthetic speaker (the voice, pitch, rate and
formant scale that SPEAKERS.TXT records), so the only new thing is the word. Writes FLAC files, a
manifest ``OUT/manifest.jsonl`` and the hotwords file ``OUT/hotwords.txt`` (one word a line).
Evaluate with ``scripts/hotword_eval.py --manifest OUT/manifest.jsonl --hotwords OUT/hotwords.txt``.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.data.manifest import Utterance, read_manifest, write_manifest  # noqa: E402
from asr.data.synth import SAMPLE_RATE, render, write_flac  # noqa: E402
from asr.data.synth_plan import UttJob  # noqa: E402
from asr.data.tts import Speaker  # noqa: E402

# Everyday words, none a homophone of another; those the training text holds are dropped.
DEFAULT_WORDS = ("RIVER", "GARDEN", "WINDOW", "MOUNTAIN", "PENCIL", "ORANGE", "BLANKET", "CAMERA", "DOCTOR",
                 "ISLAND", "KITCHEN", "LADDER", "MIRROR", "PICTURE", "ROCKET", "SILVER", "TICKET", "VILLAGE",
                 "WINTER", "YELLOW")
_NAME = re.compile(r"^(?P<engine>flite|espeak-ng) (?P<voice>\S+) pitch (?P<pitch>-?\d+) rate (?P<rate>[0-9.]+)"
                   r"(?: formant (?P<formant>[0-9.]+))?$")


def read_speakers(path: Path) -> dict[str, Speaker]:
    """SPEAKERS.TXT (``ID | SEX | SUBSET | MINUTES | NAME``) to the speakers it names."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(";") or not line.strip():
            continue
        sid, sex, subset, _, name = (f.strip() for f in line.split("|", 4))
        m = _NAME.match(name)
        if m is None:
            raise SystemExit(f"{path}: cannot read speaker {sid}: {name!r}")
        out[sid] = Speaker(int(sid), sex, subset, m["engine"], m["voice"], int(m["pitch"]), float(m["rate"]),
                           float(m["formant"] or 1.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True, type=Path, help="test manifest whose speakers and texts to reuse")
    ap.add_argument("--speakers", required=True, type=Path, help="the corpus's SPEAKERS.TXT")
    ap.add_argument("--train", required=True, type=Path, help="training manifest (the words must be absent)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--words", default=",".join(DEFAULT_WORDS), help="comma list of candidate hotwords")
    ap.add_argument("--limit", type=int, default=200, help="utterances to build, evenly spaced over the manifest (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    seen = {w for u in read_manifest(args.train) for w in u.text.split()}
    words = [w.strip().upper() for w in args.words.split(",") if w.strip() and w.strip().upper() not in seen]
    if not words:
        raise SystemExit("every candidate word occurs in the training text")
    speakers = read_speakers(args.speakers)
    rng = random.Random(args.seed)
    utts = read_manifest(args.manifest)
    if args.limit and args.limit < len(utts):  # evenly spaced, so every test speaker is in the set
        utts = [utts[int(i * len(utts) / args.limit)] for i in range(args.limit)]
    args.out.mkdir(parents=True, exist_ok=True)
    out = []
    for i, u in enumerate(utts):
        ref = u.text.split()
        ref.insert(rng.randrange(len(ref) + 1), words[i % len(words)])
        text = " ".join(ref)
        path = args.out / f"{u.id}-hw.flac"
        samples = render(UttJob(f"{u.id}-hw", str(path), text, speakers[u.speaker], seed=i, augment=False,
                                noise_snr=None, reverb_prob=0.0, speed_factors=()))
        write_flac(path, samples)
        out.append(Utterance(id=f"{u.id}-hw", audio=str(path.resolve()), offset=0.0,
                             duration=len(samples) / SAMPLE_RATE, text=text, speaker=u.speaker))
    write_manifest(args.out / "manifest.jsonl", out)
    (args.out / "hotwords.txt").write_text("".join(f"{w}\n" for w in words), encoding="utf-8")
    print(f"hotword set: {len(out)} utterances, {len(words)} hotwords absent from training -> {args.out}")


if __name__ == "__main__":
    main()
