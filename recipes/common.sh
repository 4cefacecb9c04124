# Sourced by every recipes/<corpus>/run.sh. It holds what the recipes share:
#   - the environment (as Kaldi's and ESPnet's path.sh): the repository's .venv first on PATH, so a recipe
#     runs from any shell after `make setup`;
#   - option parsing: --stage/--stop-stage, --quick, --nj and every variable the recipe defines;
#   - log(), stage markers (.done) and the stages every recipe runs the same way: train (with resume),
#     average, decode, score and the results table.
# Only orchestration lives here; all model and data logic is in `asr ...` commands.
set -euo pipefail

asr_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*" >&2
}

# The project's environment: ASR_VENV, default <repo>/.venv (what `make setup` creates). Its bin/ goes
# first on PATH, so `asr`, `python` and `torchrun` are the project's even in a shell that never activated it.
use_project_env() {
  local venv=${ASR_VENV:-$asr_root/.venv}
  if [ ! -x "$venv/bin/asr" ]; then
    echo "$0: error: $venv/bin/asr not found: run 'make setup' in $asr_root first" \
      "(or set ASR_VENV to a virtual environment with the asr package installed)" >&2
    exit 2
  fi
  PATH="$(cd "$venv/bin" && pwd):$PATH"
  export PATH
  export PYTHONUNBUFFERED=1
}
use_project_env

# shared_data NAME: the data set NAME in the shared data folder beside the checkout: $ASR_SHARED_DIR/data/NAME,
# else the nearest <ancestor>/shared/data/NAME above the repository (../shared for a clone; a worktree may
# sit deeper). Prints <repo>/../shared/data/NAME when there is none, for the error message.
shared_data() {
  if [ -n "${ASR_SHARED_DIR:-}" ]; then echo "$ASR_SHARED_DIR/data/$1"; return; fi
  local d=$asr_root
  while [ "$d" != / ]; do
    d=$(dirname "$d")
    if [ -d "$d/shared/data/$1" ]; then echo "$d/shared/data/$1"; return; fi
  done
  echo "$(dirname "$asr_root")/shared/data/$1"
}

# Options every recipe has; a recipe may change these defaults before parse_options.
stage=0
stop_stage=7
quick=false
nj=2

# parse_options "$@": `--some-flag value` sets some_flag=value for a variable the script defined.
# A variable whose default is true/false is a switch: `--quick` alone sets it to true.
parse_options() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --help|-h) grep -E '^# ' "$0" | sed 's/^# //'; exit 0 ;;
      --*)
        local name=${1#--}; name=${name//-/_}
        if ! declare -p "$name" >/dev/null 2>&1; then
          echo "$0: unknown option $1 (see --help)" >&2; exit 2
        fi
        local current=${!name}
        if [ "$current" = true ] || [ "$current" = false ]; then
          if [ $# -ge 2 ] && { [ "$2" = true ] || [ "$2" = false ]; }; then
            printf -v "$name" '%s' "$2"; shift 2
          else
            printf -v "$name" '%s' true; shift
          fi
          continue
        fi
        if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 2; fi
        printf -v "$name" '%s' "$2"; shift 2 ;;
      *) echo "$0: unexpected argument $1 (see --help)" >&2; exit 2 ;;
    esac
  done
}

# run_stage N "description" command...: runs the stage when N is in [stage, stop_stage] and its marker
# $done_dir/stage-N.done is absent; writes the marker only after the command succeeded, so a failed
# stage re-runs next time.
run_stage() {
  local n=$1 desc=$2; shift 2
  if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ]; then return 0; fi
  local marker="$done_dir/stage-$n.done"
  if [ -f "$marker" ]; then
    log "stage $n ($desc): already done, skipping (remove $marker to redo)"
    return 0
  fi
  log "stage $n: $desc"
  local t0=$SECONDS
  "$@"
  mkdir -p "$done_dir"
  echo "finished $(date -u '+%Y-%m-%dT%H:%M:%SZ') in $((SECONDS - t0)) s" > "$marker"
  log "stage $n: done in $((SECONDS - t0)) s"
}

# reached N: true when this run goes as far as stage N (for the steps after the last stage).
reached() { [ "$stop_stage" -ge "$1" ]; }

# partial_ok command...: batch commands exit 1 when they skipped bad items (listed in their failures
# file) but finished the rest; a recipe goes on then, and stops on any other failure.
partial_ok() {
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -eq 1 ]; then
    log "warning: '$1 ${2:-}' skipped some items (see its failures/rejects file); continuing"
    return 0
  fi
  return "$rc"
}

# -- the shared stages --------------------------------------------------------------------------------

# validate_manifest RAW OUT: the entries of RAW whose audio and text are usable go to OUT, the others
# to OUT's .rejects.tsv.
validate_manifest() {
  partial_ok asr manifest validate "$1" --out "$2" --rejects "${2%.jsonl}.rejects.tsv"
}

# compute_features MANIFEST OUT_DIR CONFIG: log-mel features (and, for a training set, CMVN statistics).
compute_features() {
  partial_ok asr features --manifest "$1" --out-dir "$2" --nj "$nj" --config "$3"
}

# train_model EXP CONFIG TRAIN VALID LANG_DIR FEATS_DIR [LAUNCHER...]: `asr train` into EXP/train with the
# tokenizer LANG_DIR/tokenizer.model and the CMVN statistics FEATS_DIR/cmvn.json. When EXP/train already
# holds a checkpoint (the stage was stopped or killed), it resumes from the newest intact one. LAUNCHER
# replaces `asr train`, e.g. `torchrun --standalone --nproc-per-node 2 -m asr train`.
train_model() {
  local exp=$1 config=$2 train=$3 valid=$4 lang=$5 feats=$6; shift 6
  local launch=("$@") resume=()
  [ ${#launch[@]} -gt 0 ] || launch=(asr train)
  if compgen -G "$exp/train/checkpoints/ckpt-*.pt" >/dev/null; then
    log "resuming the training in $exp/train"
    resume=(--resume)
  fi
  "${launch[@]}" --config "$config" --train-manifest "$train" --valid-manifest "$valid" \
    --tokenizer "$lang/tokenizer.model" --cmvn "$feats/cmvn.json" --exp-dir "$exp/train" "${resume[@]}"
}

# average_model EXP: EXP/final averages the best validations of EXP/train; how many is the experiment's
# train.average_n. This is the one place a recipe averages.
average_model() {
  asr average --exp-dir "$1/train" --mode best --out "$1/final"
}

# decode_set MODEL MANIFEST OUT_DIR: decodes with the model's defaults plus $decode_opts (the recipe's
# settings that differ, e.g. "--beam 4").
decode_opts=""
decode_set() {
  # shellcheck disable=SC2086
  partial_ok asr decode --model "$1" --manifest "$2" --out-dir "$3" --nj "$nj" $decode_opts
}

# score_set REF HYPS OUT_DIR: WER/CER reports of HYPS against the manifest REF.
score_set() {
  asr score --ref "$1" --hyp "$2" --out-dir "$3"
}

# show_results EXP "SETS" CONFIG: the WER table of EXP/score/<set> for each set, printed and written to
# EXP/RESULTS.md, and into the model card (README.md) of each model folder EXP/final and EXP/*/final
# (a recipe with several models, as FSDD's leave-one-speaker-out folds, has one per model).
show_results() {
  # shellcheck disable=SC2086
  asr results --exp-dir "$1" --sets $2 --config "$3" --out "$1/RESULTS.md"
  local model
  for model in "$1"/final "$1"/*/final; do
    if [ -f "$model/model.pt" ]; then asr model-card "$model" --results "$1/RESULTS.md"; fi
  done
}
