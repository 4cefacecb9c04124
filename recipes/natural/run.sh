#!/usr/bin/env bash
# Natural sentences: the default recipe's corpus sizes, voices and model (recipes/mini), but speaking
# WordNet example sentences of 2-8 words within the 3000 most frequent words instead of random word
# sequences, decoded with shallow fusion of an LSTM LM trained on every WordNet sentence that is in no
# evaluation set (dev, test, test-voice).
#
# Usage: recipes/natural/run.sh [--stage N] [--stop-stage M] [--nj 2] [--nproc 2] [--config FILE]
#                               [--data-dir DIR] [--exp-dir DIR] [--lm-weights "0.2 0.4"] [--vtln true|false]
#                               [--adapt true|false]
#   Stages: 0 synthesise; 1-7 as recipes/mini (manifests ... score, without LM); 8 LM text; 9 train the
#   LM; 10 decode and score dev with each --lm-weights value and keep the best on dev; 11 decode and
#   score test and test-voice with it; 12 the table (RESULTS-lm.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../common.sh"

stop_stage=12
nproc=2
config="$here/../mini/conf/train.yaml"
data_dir="$here/data/default"
exp_dir="$here/exp/default"
lm_weights="0.2 0.4"
vtln=true  # test-time VTLN, as recipes/mini, for the decodes with and without the LM
adapt=true  # speaker adaptation on the first pass, as recipes/mini but without its entropy term
# (natural dev with LM 0.2: 38.87% without it, 40.27 at weight 30, 46.20 at 300: its first pass is ~40% wrong)
parse_options "$@"
done_dir=$exp_dir/.done
manifests=$data_dir/manifests
eval_sets="dev test test-voice"
mkdir -p "$exp_dir"

stage0() {
  asr corpus synth --out "$data_dir/corpus" --hours 4.5 --dev-utterances 400 --test-utterances 400 --speakers 100 \
    --dev-speakers 6 --test-speakers 6 --min-words 2 --max-words 8 --vocab 3000 --speed-perturb 0.9,1.0,1.1 \
    --voice-subset test-voice --wide-voices --formant-spread 0.15 --seed 1 --nj "$nj"
}

# Stages 1-7 of recipes/mini on this corpus (its stage 0 is ours).
stages1to7() {
  "$here/../mini/run.sh" --stage $((stage > 1 ? stage : 1)) --stop-stage $((stop_stage < 7 ? stop_stage : 7)) --nj "$nj" --nproc "$nproc" --config "$config" \
    --vtln "$vtln" --adapt "$adapt" --adapt-entropy 0 --data-dir "$data_dir" --exp-dir "$exp_dir"
}

stage8() {
  python "$here/local/lm_text.py" --exclude "$manifests/dev.jsonl" "$manifests/test.jsonl" \
    "$manifests/test-voice.jsonl" --out "$data_dir/lm/text.txt"
}

stage9() {
  asr train-lm --text "$data_dir/lm/text.txt" --valid "$manifests/dev.jsonl" \
    --tokenizer "$data_dir/lang/tokenizer.model" --out "$exp_dir/lm"
}

wer_of() { python -c 'import json,sys; print(json.load(open(sys.argv[1]))["wer"])' "$1"; }

# decode_lm WEIGHT SET: decodes SET with the model's defaults plus LM fusion, and scores it.
decode_lm() {
  decode_opts="--lm $exp_dir/lm --lm-weight $1"
  if [ "$vtln" = true ]; then decode_opts="$decode_opts --vtln"; fi
  if [ "$adapt" = true ]; then decode_opts="$decode_opts --adapt"; fi
  decode_set "$exp_dir/final" "$manifests/$2.jsonl" "$exp_dir/decode-lm$1/$2"
  score_set "$manifests/$2.jsonl" "$exp_dir/decode-lm$1/$2/hyps.jsonl" "$exp_dir/score-lm$1/$2"
}

stage10() {
  local best="" best_wer=""
  for w in $lm_weights; do
    decode_lm "$w" dev
    local wer; wer=$(wer_of "$exp_dir/score-lm$w/dev/results.json")
    if [ -z "$best" ] || python -c "import sys; sys.exit(not $wer < $best_wer)"; then best=$w; best_wer=$wer; fi
  done
  log "best LM weight on dev: $best (dev WER $best_wer)"
  echo "$best" > "$exp_dir/lm_weight"
}

stage11() {
  local w part; w=$(cat "$exp_dir/lm_weight")
  for part in test test-voice; do decode_lm "$w" "$part"; done
}

stage12() {
  local w part; w=$(cat "$exp_dir/lm_weight")
  for part in $eval_sets; do
    echo "$part: no LM $(cat "$exp_dir/score/$part/summary.md")"
    echo "$part: LM $w $(cat "$exp_dir/score-lm$w/$part/summary.md")"
  done | tee "$exp_dir/RESULTS-lm.md"
}

run_stage 0 "synthesise the natural-sentence corpus" stage0
if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 1 ]; then stages1to7; fi
run_stage 8 "LM text: WordNet sentences in no evaluation set" stage8
run_stage 9 "train the LSTM LM" stage9
run_stage 10 "decode dev with LM fusion, choose the LM weight" stage10
run_stage 11 "decode test and test-voice with LM fusion" stage11
run_stage 12 "results with and without the LM" stage12
