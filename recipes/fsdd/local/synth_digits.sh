#!/usr/bin/env bash
# Synthetic digits for FSDD: the training voices (flite kal16/awb/slt, espeak-ng accents and variants;
# never Festival's, which are kept for evaluation) saying digit words alone and strings of 2-4 digits,
# resampled to FSDD's 8 kHz so both have the same bandwidth. Writes OUT/train.jsonl and OUT/dev.jsonl.
# Usage: local/synth_digits.sh OUT UTTERANCES NJ
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../common.sh"
out=$1 utts=$2 nj=$3

asr corpus synth --out "$out/corpus" --digits --utterances "$utts" --dev-utterances $((utts / 20 + 1)) \
  --test-utterances 10 --speakers 64 --dev-speakers 4 --test-speakers 2 --min-words 1 --max-words 4 \
  --speed-perturb 0.9,1.0,1.1 --reverb-prob 0.3 --seed 1 --nj "$nj"
if [ ! -f "$out/corpus/.8khz" ]; then
  # In place, one file at a time through a temporary name, so an interrupted run can simply re-run.
  find "$out/corpus/train-clean" "$out/corpus/dev-clean" -name '*.flac' -print0 \
    | xargs -0 -P "$nj" -I{} sh -c 'sox "$1" -r 8000 "$1.8k.flac" && mv "$1.8k.flac" "$1"' _ {}
  touch "$out/corpus/.8khz"
fi
for part in train dev; do
  partial_ok asr manifest import librispeech "$out/corpus/$part-clean" --out "$out/$part.jsonl"
done
