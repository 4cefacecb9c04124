#!/usr/bin/env bash
# LibriSpeech: download (or use an existing copy), then manifests, features, tokenizer, training,
# averaging, decoding and scoring of each test set.
#
# Usage: recipes/librispeech/run.sh [--stage N] [--stop-stage M] [--data-dir DIR] [--download-dir DIR]
#          [--train-set train-clean-100] [--dev-set dev-clean] [--test-sets "dev-clean test-clean"]
#          [--config conf/train_100h.yaml] [--vocab-size 5000] [--exp-dir DIR] [--nj 2] [--beam 10]
#   --data-dir       a folder holding LibriSpeech/<subset> (or the subsets directly); skips downloading
#   --download-dir   where stage 0 downloads to from openslr.org when --data-dir is not given
#   --train-set      one subset, or several joined by '+', e.g. train-clean-100+train-clean-360+train-other-500
# Stages: 0 data, 1 manifests, 2 features, 3 tokenizer, 4 train, 5 average, 6 decode, 7 score.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../common.sh"

data_dir=""
download_dir="$here/download"
train_set=train-clean-100
dev_set=dev-clean
test_sets="dev-clean test-clean dev-other test-other"
config="$here/conf/train_100h.yaml"
vocab_size=5000
exp_dir="$here/exp/train_100h"
work_dir=""
beam=""
parse_options "$@"

[ -z "$beam" ] || decode_opts="--beam $beam"
work_dir=${work_dir:-$exp_dir/data}
done_dir=$exp_dir/.done
manifests=$work_dir/manifests
feats=$work_dir/feats
lang=$work_dir/lang
mkdir -p "$exp_dir"

subset_dir() {
  # Accept both DIR/LibriSpeech/<subset> and DIR/<subset>.
  if [ -d "$corpus/LibriSpeech/$1" ]; then echo "$corpus/LibriSpeech/$1"; else echo "$corpus/$1"; fi
}

all_sets() { echo "${train_set//+/ } $dev_set $test_sets" | tr ' ' '\n' | awk 'NF && !seen[$0]++'; }

if [ -n "$data_dir" ]; then corpus=$data_dir; else corpus=$download_dir; fi

stage0() {
  if [ -n "$data_dir" ]; then
    for s in $(all_sets); do
      [ -d "$(subset_dir "$s")" ] || { log "missing subset $s under $data_dir"; return 1; }
    done
    log "using the existing corpus in $data_dir"
  else
    # shellcheck disable=SC2046
    python "$here/local/download.py" --subsets $(all_sets) --out "$download_dir"
  fi
}

stage1() {
  for s in $(all_sets); do
    partial_ok asr manifest import librispeech "$(subset_dir "$s")" --out "$manifests/$s.raw.jsonl"
    validate_manifest "$manifests/$s.raw.jsonl" "$manifests/$s.jsonl"
  done
  # shellcheck disable=SC2046
  python "$here/local/combine.py" --out "$manifests/train.jsonl" \
    $(for s in ${train_set//+/ }; do echo "$manifests/$s.jsonl"; done)
}

stage2() {
  compute_features "$manifests/train.jsonl" "$feats/train" "$config"
  compute_features "$manifests/$dev_set.jsonl" "$feats/$dev_set" "$config"
}

stage3() { asr tokenizer --manifest "$manifests/train.jsonl" --out "$lang/tokenizer" --vocab-size "$vocab_size"; }

stage4() {
  train_model "$exp_dir" "$config" "$feats/train/train.jsonl" "$feats/$dev_set/$dev_set.jsonl" "$lang" "$feats/train"
}

stage6() {
  for s in $test_sets; do decode_set "$exp_dir/final" "$manifests/$s.jsonl" "$exp_dir/decode/$s"; done
}

stage7() {
  for s in $test_sets; do score_set "$manifests/$s.jsonl" "$exp_dir/decode/$s/hyps.jsonl" "$exp_dir/score/$s"; done
}

run_stage 0 "data: link or download" stage0
run_stage 1 "import manifests and validate" stage1
run_stage 2 "log-mel features and CMVN" stage2
run_stage 3 "train the tokenizer" stage3
run_stage 4 "train LAS + CTC" stage4
run_stage 5 "average the best checkpoints" average_model "$exp_dir"
run_stage 6 "decode the test sets" stage6
run_stage 7 "score" stage7

if reached 7; then show_results "$exp_dir" "$test_sets" "$config"; fi
