#!/usr/bin/env bash
# The default recipe: synthesise a multi-speaker corpus in LibriSpeech layout, train a LAS + joint-CTC
# model on 2 CPU cores, decode dev and test (speakers unseen in training) and test-voice (a voice unseen
# in training) and print the WER table.
#
# Usage: recipes/mini/run.sh [--stage N] [--stop-stage M] [--quick] [--nj 2] [--config conf/train.yaml]
#                            [--data-dir DIR] [--exp-dir DIR] [--real-speech DIR]
#   --nproc N      training processes (DDP ranks) under torchrun; 1 runs plain `asr train`
#   --quick        the same stages on a tiny corpus with a tiny model (about a minute; used by a test)
#   --stage/--stop-stage  run only stages N..M (0 data, 1 manifests, 2 features, 3 tokenizer, 4 train,
#                  5 average, 6 decode, 7 score); finished stages leave a marker and are skipped on re-run
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../common.sh"

stage=0
stop_stage=7
quick=false
nj=2
nproc=2
config=""
data_dir=""
exp_dir=""
real_speech="$here/../../../shared/data/real-speech"
beam=10
ctc_weight=0.3
parse_options "$@"

if [ "$quick" = true ]; then
  tag=quick
  synth_opts="--utterances 48 --dev-fraction 0.17 --test-fraction 0.17 --speakers 20 --min-words 1 --max-words 3
              --vocab 40 --word-sequences"
  vocab_size=48
  config=${config:-$here/conf/quick.yaml}
  beam=4
  nproc=1
else
  tag=default
  # Random sequences of 2-8 words from a 150-word vocabulary, homophones removed (an AN4-sized task):
  # measured, natural sentences from a few thousand words let the speller memorise sentences instead of
  # learning words (test WER 52%), and 300 words left each word too few examples (22%).
  synth_opts="--hours 4.5 --dev-utterances 400 --test-utterances 400 --speakers 100 --dev-speakers 6
              --test-speakers 6 --min-words 2 --max-words 8 --vocab 150 --word-sequences --speed-perturb 0.9,1.0,1.1"
  vocab_size=256
  config=${config:-$here/conf/train.yaml}
fi
data_dir=${data_dir:-$here/data/$tag}
exp_dir=${exp_dir:-$here/exp/$tag}
done_dir=$exp_dir/.done
manifests=$data_dir/manifests
mkdir -p "$exp_dir"
export PYTHONUNBUFFERED=1

# Evaluation sets: dev and test (speakers unseen in training, of the training voices) and test-voice
# (the flite voice rms, never heard in training: the hard set, as LibriSpeech's test-other).
eval_sets="dev test test-voice"
folder() { case $1 in test-voice) echo test-voice ;; *) echo "$1-clean" ;; esac; }

stage0() { asr corpus synth --out "$data_dir/corpus" $synth_opts --voice-subset test-voice --seed 1 --nj "$nj"; }

stage1() {
  for part in train $eval_sets; do
    partial_ok asr manifest import librispeech "$data_dir/corpus/$(folder "$part")" --out "$manifests/$part.raw.jsonl"
    partial_ok asr manifest validate "$manifests/$part.raw.jsonl" --out "$manifests/$part.jsonl" \
      --rejects "$manifests/$part.rejects.tsv"
  done
}

stage2() {
  for part in train $eval_sets; do
    partial_ok asr features --manifest "$manifests/$part.jsonl" --out-dir "$data_dir/feats/$part" --nj "$nj" --config "$config"
  done
}

stage3() {
  asr tokenizer --manifest "$manifests/train.jsonl" --out "$data_dir/lang/tokenizer" \
    --vocab-size "$vocab_size" --model-type unigram
}

stage4() {
  local resume=""
  [ -d "$exp_dir/train/checkpoints" ] && resume="--resume"
  # Two DDP ranks of one thread each use 2 cores better than one process with two threads.
  local launch="asr train"
  [ "$nproc" -gt 1 ] && launch="torchrun --standalone --nproc-per-node $nproc -m asr train"
  $launch --config "$config" --train-manifest "$data_dir/feats/train/train.jsonl" \
    --valid-manifest "$data_dir/feats/dev/dev.jsonl" --tokenizer "$data_dir/lang/tokenizer.model" \
    --cmvn "$data_dir/feats/train/cmvn.json" --exp-dir "$exp_dir/train" $resume
}

stage5() { asr average --exp-dir "$exp_dir/train" --n 3 --mode best --out "$exp_dir/final"; }

stage6() {
  for part in $eval_sets; do
    partial_ok asr decode --model "$exp_dir/final" --manifest "$manifests/$part.jsonl" \
      --out-dir "$exp_dir/decode/$part" --beam "$beam" --ctc-weight "$ctc_weight" --nj "$nj"
  done
}

stage7() {
  for part in $eval_sets; do
    asr score --ref "$manifests/$part.jsonl" --hyp "$exp_dir/decode/$part/hyps.jsonl" \
      --out-dir "$exp_dir/score/$part"
  done
}

run_stage 0 "synthesise the corpus" stage0
run_stage 1 "import manifests and validate" stage1
run_stage 2 "log-mel features and CMVN" stage2
run_stage 3 "train the tokenizer" stage3
run_stage 4 "train LAS + CTC" stage4
run_stage 5 "average the best checkpoints" stage5
run_stage 6 "decode dev and test" stage6
run_stage 7 "score" stage7

if [ "$stop_stage" -ge 7 ]; then
  asr results --exp-dir "$exp_dir" --sets $eval_sets \
    --config "$config" --out "$exp_dir/RESULTS.md"
  clip=$(ls "$real_speech"/audio/*.flac 2>/dev/null | head -n 1 || true)
  if [ -n "$clip" ]; then
    log "transcribing one real clip (evaluation only): $clip"
    asr transcribe --model "$exp_dir/final" "$clip" --format txt --output-dir "$exp_dir/real-speech"
  fi
fi
