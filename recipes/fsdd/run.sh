#!/usr/bin/env bash
# FSDD: real human speech, spoken digits from 6 speakers (CC BY-SA 4.0, github.com/Jakobovski/free-spoken-digit-dataset).
# Trains on the training takes (5-49) and scores the official test split (takes 0-4). A second model
# trained without one speaker scores that held-out speaker.
#
# Usage: recipes/fsdd/run.sh [--stage N] [--stop-stage M] [--fsdd-dir DIR] [--holdout-speaker theo]
#                            [--config conf/train.yaml] [--holdout-config conf/train_holdout.yaml]
#                            [--exp-dir DIR] [--nj 2] [--quick] [--splits "official holdout"]
#                            [--speed-perturb 0.9,1.0,1.1]   ("" = no speed perturbation)
#   The held-out-speaker model normalises each utterance by its own mean (model.utterance_cmn): a new
#   speaker's microphone and voice shift the spectrum, and the corpus mean cannot remove that.
# Stages: 0 data, 1 manifests, 2 features, 3 tokenizer, 4 train, 5 average, 6 decode, 7 score.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../common.sh"

stage=0
stop_stage=7
fsdd_dir="$here/../../../shared/data/fsdd"
holdout_speaker=theo
config="$here/conf/train.yaml"
holdout_config="$here/conf/train_holdout.yaml"
exp_dir="$here/exp"
nj=2
beam=10
ctc_weight=0.3
quick=false
splits="official holdout"
# Kaldi-style speed perturbation of the training takes, e.g. 0.9,1.0,1.1: each take also at 0.9x and 1.1x
# speed (pitch and formants move with it). Off by default: measured, it left the held-out speaker at 11.4%.
speed_perturb=""
parse_options "$@"

if [ "$quick" = true ]; then config="$here/conf/quick.yaml"; holdout_config=$config; exp_dir="$exp_dir-quick"; fi
config_of() { if [ "$1" = holdout ]; then echo "$holdout_config"; else echo "$config"; fi; }
data_dir=$exp_dir/data
done_dir=$exp_dir/.done
manifests=$data_dir/manifests
train_name=train.valid.jsonl
[ -n "$speed_perturb" ] && train_name=train.sp.jsonl
mkdir -p "$exp_dir"
export PYTHONUNBUFFERED=1

stage0() {
  local rec="$fsdd_dir/recordings"
  [ -d "$rec" ] || rec="$fsdd_dir"
  if ! ls "$rec"/*_*_*.wav >/dev/null 2>&1; then
    log "no FSDD recordings in $fsdd_dir; clone github.com/Jakobovski/free-spoken-digit-dataset and pass --fsdd-dir"
    return 1
  fi
  mkdir -p "$data_dir"
  ln -sfn "$(cd "$rec" && pwd)" "$data_dir/recordings"
}

stage1() {
  local rec=$data_dir/recordings
  partial_ok asr manifest import fsdd "$rec" --split train --out "$manifests/official/train_all.jsonl"
  partial_ok asr manifest import fsdd "$rec" --split test --out "$manifests/official/test.jsonl"
  partial_ok asr manifest import fsdd "$rec" --split train --holdout-speaker "$holdout_speaker" --out "$manifests/holdout/train_all.jsonl"
  partial_ok asr manifest import fsdd "$rec" --split test --holdout-speaker "$holdout_speaker" --out "$manifests/holdout/test.jsonl"
  for s in $splits; do
    python "$here/local/split_dev.py" --in "$manifests/$s/train_all.jsonl" \
      --train-out "$manifests/$s/train.jsonl" --dev-out "$manifests/$s/dev.jsonl"
    for part in train dev test; do
      partial_ok asr manifest validate "$manifests/$s/$part.jsonl" --out "$manifests/$s/$part.valid.jsonl" \
        --rejects "$manifests/$s/$part.rejects.tsv"
    done
    if [ -n "$speed_perturb" ]; then
      asr manifest speed-perturb "$manifests/$s/train.valid.jsonl" --out "$manifests/$s/$train_name" \
        --factors "$speed_perturb"
    fi
  done
}

stage2() {
  for s in $splits; do
    partial_ok asr features --manifest "$manifests/$s/$train_name" --out-dir "$data_dir/feats/$s/train" --nj "$nj" --config "$(config_of "$s")"
    partial_ok asr features --manifest "$manifests/$s/dev.valid.jsonl" --out-dir "$data_dir/feats/$s/dev" --nj "$nj" --config "$(config_of "$s")"
  done
}

stage3() {
  asr tokenizer --manifest "$manifests/${splits%% *}/train.valid.jsonl" --out "$data_dir/lang/tokenizer" \
    --vocab-size 32 --model-type unigram
}

stage4() {
  for s in $splits; do
    local resume=""
    [ -d "$exp_dir/$s/train/checkpoints" ] && resume="--resume"
    asr train --config "$(config_of "$s")" --train-manifest "$data_dir/feats/$s/train/$train_name" \
      --valid-manifest "$data_dir/feats/$s/dev/dev.valid.jsonl" --tokenizer "$data_dir/lang/tokenizer.model" \
      --cmvn "$data_dir/feats/$s/train/cmvn.json" --exp-dir "$exp_dir/$s/train" $resume
  done
}

stage5() {
  for s in $splits; do
    asr average --exp-dir "$exp_dir/$s/train" --n 3 --mode best --out "$exp_dir/$s/final"
  done
}

stage6() {
  for s in $splits; do
    partial_ok asr decode --model "$exp_dir/$s/final" --manifest "$manifests/$s/test.valid.jsonl" \
      --out-dir "$exp_dir/decode/$s" --beam "$beam" --ctc-weight "$ctc_weight" --nj "$nj"
  done
}

stage7() {
  for s in $splits; do
    asr score --ref "$manifests/$s/test.valid.jsonl" --hyp "$exp_dir/decode/$s/hyps.jsonl" --out-dir "$exp_dir/score/$s"
  done
}

run_stage 0 "link the FSDD recordings" stage0
run_stage 1 "manifests (official and held-out-speaker splits) and validation" stage1
run_stage 2 "log-mel features and CMVN" stage2
run_stage 3 "train the tokenizer" stage3
run_stage 4 "train LAS + CTC (one model per split)" stage4
run_stage 5 "average the best checkpoints" stage5
run_stage 6 "decode the test sets" stage6
run_stage 7 "score" stage7

if [ "$stop_stage" -ge 7 ]; then
  asr results --exp-dir "$exp_dir" --sets $splits --config "official: $config, holdout: $holdout_config" \
    --out "$exp_dir/RESULTS.md"
fi
