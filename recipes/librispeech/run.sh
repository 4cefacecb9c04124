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

stage=0
stop_stage=7
data_dir=""
download_dir="$here/download"
train_set=train-clean-100
dev_set=dev-clean
test_sets="dev-clean test-clean dev-other test-other"
config="$here/conf/train_100h.yaml"
vocab_size=5000
exp_dir="$here/exp/train_100h"
work_dir=""
nj=2
beam=10
ctc_weight=0.3
feature_source=cached
parse_options "$@"

work_dir=${work_dir:-$exp_dir/data}
done_dir=$exp_dir/.done
manifests=$work_dir/manifests
mkdir -p "$exp_dir"
export PYTHONUNBUFFERED=1

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
    python "$here/local/download.py" --subsets $(all_sets) --out "$download_dir"
  fi
}

stage1() {
  for s in $(all_sets); do
    partial_ok asr manifest import librispeech "$(subset_dir "$s")" --out "$manifests/$s.raw.jsonl"
    partial_ok asr manifest validate "$manifests/$s.raw.jsonl" --out "$manifests/$s.jsonl" --rejects "$manifests/$s.rejects.tsv"
  done
  python "$here/local/combine.py" --out "$manifests/train.jsonl" \
    $(for s in ${train_set//+/ }; do echo "$manifests/$s.jsonl"; done)
}

stage2() {
  if [ "$feature_source" != cached ]; then log "feature_source=$feature_source: computing CMVN only"; fi
  partial_ok asr features --manifest "$manifests/train.jsonl" --out-dir "$work_dir/feats/train" --nj "$nj" --config "$config"
  partial_ok asr features --manifest "$manifests/$dev_set.jsonl" --out-dir "$work_dir/feats/$dev_set" --nj "$nj" --config "$config"
}

stage3() {
  asr tokenizer --manifest "$manifests/train.jsonl" --out "$work_dir/lang/tokenizer" \
    --vocab-size "$vocab_size" --model-type unigram
}

stage4() {
  local resume=""
  [ -d "$exp_dir/train/checkpoints" ] && resume="--resume"
  asr train --config "$config" --train-manifest "$work_dir/feats/train/train.jsonl" \
    --valid-manifest "$work_dir/feats/$dev_set/$dev_set.jsonl" --tokenizer "$work_dir/lang/tokenizer.model" \
    --cmvn "$work_dir/feats/train/cmvn.json" --exp-dir "$exp_dir/train" $resume
}

stage5() { asr average --exp-dir "$exp_dir/train" --n 5 --mode best --out "$exp_dir/final"; }

stage6() {
  for s in $test_sets; do
    partial_ok asr decode --model "$exp_dir/final" --manifest "$manifests/$s.jsonl" --out-dir "$exp_dir/decode/$s" \
      --beam "$beam" --ctc-weight "$ctc_weight" --nj "$nj"
  done
}

stage7() {
  for s in $test_sets; do
    asr score --ref "$manifests/$s.jsonl" --hyp "$exp_dir/decode/$s/hyps.jsonl" --out-dir "$exp_dir/score/$s"
  done
}

run_stage 0 "data: link or download" stage0
run_stage 1 "import manifests and validate" stage1
run_stage 2 "log-mel features and CMVN" stage2
run_stage 3 "train the tokenizer" stage3
run_stage 4 "train LAS + CTC" stage4
run_stage 5 "average the best checkpoints" stage5
run_stage 6 "decode the test sets" stage6
run_stage 7 "score" stage7

if [ "$stop_stage" -ge 7 ]; then
  asr results --exp-dir "$exp_dir" --sets $test_sets \
    --config "$config" --out "$exp_dir/RESULTS.md"
fi
