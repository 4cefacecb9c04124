# Helpers sourced by every recipes/<corpus>/run.sh: logging, option parsing and stage markers.
# Only orchestration lives here; all model and data logic is in `asr ...` commands.

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*" >&2
}

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
# is absent; writes the marker only after the command succeeded, so a failed stage re-runs next time.
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
