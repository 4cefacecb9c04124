#!/usr/bin/env python3
"""A dev-voice set for a synthetic corpus: its dev sentences spoken by espeak-ng voices never heard in training.

The corpus' test-voice (flite rms) is a test set, so design choices for unseen voices must not be made on
it. This script builds the selection set that LibriSpeech calls dev-other: a few speakers whose espeak-ng
variant (formant set, breathiness, synthesiser) no training speaker of the corpus uses, each saying a
share of the corpus' dev sentences (so no sentence of training or test). Like the held-out flite voice, the
speakers are spoken as the engine speaks them, without a formant warp. Output in LibriSpeech's layout, for
``asr manifest import librispeech``.

Usage: scripts/dev_voice_set.py --corpus DATA/corpus --out DATA/corpus/dev-voice [--speakers 4] [--utts 100]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from asr.data.synth import UttJob, render, write_flac
from asr.data.tts import ESPEAK_VARIANTS, ESPEAK_VOICES, Speaker


def training_variants(speakers_txt: Path) -> set[str]:
    """The espeak-ng variants ("" for the default) that the corpus' training speakers use."""
    used = set()
    for line in speakers_txt.read_text(encoding="utf-8").splitlines():
        if line.startswith(";") or "train" not in line:
            continue
        m = re.search(r"espeak-ng (\S+)", line)
        if m:
            used.add(m.group(1).partition("+")[2])
    return used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, type=Path, help="the synthetic corpus (SPEAKERS.TXT, dev-clean)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--speakers", type=int, default=4)
    ap.add_argument("--utts", type=int, default=100, help="utterances per speaker")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    if not (args.corpus / "SPEAKERS.TXT").is_file():
        raise SystemExit(f"{args.corpus / 'SPEAKERS.TXT'}: not found (is --corpus an `asr corpus synth` folder?)")
    used = training_variants(args.corpus / "SPEAKERS.TXT")
    rng = random.Random(args.seed)
    unseen = sorted(v for v in ESPEAK_VARIANTS if v not in used)
    female = [v for v in unseen if ESPEAK_VARIANTS[v] == "F"]
    male = [v for v in unseen if ESPEAK_VARIANTS[v] == "M"]
    rng.shuffle(female)
    rng.shuffle(male)
    # Half female, as the training voices are; accents drawn from the ones espeak-ng has.
    chosen = [female.pop() if i % 2 else male.pop() for i in range(args.speakers)]

    texts = []
    for path in sorted((args.corpus / "dev-clean").rglob("*.trans.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            texts.append(line.split(" ", 1)[1])
    rng.shuffle(texts)
    if len(texts) < args.speakers * args.utts:
        raise SystemExit(f"{args.corpus}/dev-clean has {len(texts)} sentences; need {args.speakers * args.utts}")

    info = []
    for s, variant in enumerate(chosen):
        spk = Speaker(9000 + 37 * s, ESPEAK_VARIANTS[variant], "dev-voice", "espeak-ng",
                      f"{rng.choice(ESPEAK_VOICES)}+{variant}", rng.randrange(25, 75), rng.randrange(140, 185, 5))
        chapter = 1
        folder = args.out / str(spk.id) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for u in range(args.utts):
            text = texts[s * args.utts + u]
            utt = f"{spk.id}-{chapter}-{u:04d}"
            path = folder / f"{utt}.flac"
            # As the corpus renders its held-out voice: no speed change, reverberation or noise.
            job = UttJob(utt, str(path), text.lower(), spk, seed=0, augment=False, noise_snr=None,
                         reverb_prob=0.0, speed_factors=())
            write_flac(path, render(job))
            lines.append(f"{utt} {text}")
        (folder / f"{spk.id}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        info.append({"speaker": spk.id, "sex": spk.sex, "voice": spk.name})
        print(f"{spk.id} {spk.sex} {spk.name}", flush=True)
    (args.out / "speakers.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
