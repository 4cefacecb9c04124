#!/usr/bin/env bash
# Helpers of run.sh for leave-one-speaker-out (splits loso-<speaker>). Usage:
#   local/loso.sh splits FSDD_DIR                      print "loso-<speaker> ..." for every speaker found
#   local/loso.sh table SCORE_DIR SPLIT...             SCORE_DIR/../LOSO.md: each fold, the mean and the worst
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

case $1 in
  splits)
    rec=$2/recordings; [ -d "$rec" ] || rec=$2
    # FSDD names are {digit}_{speaker}_{take}.wav
    find "$rec/" -maxdepth 1 -name '*_*_*.wav' -printf '%f\n' | sed -n 's/^[0-9]_\(.*\)_[0-9]*\.wav$/loso-\1/p' \
      | sort -u | tr '\n' ' '
    ;;
  table)
    shift
    python "$here/loso_table.py" --score-dir "$@"
    ;;
  *) echo "$0: unknown action $1" >&2; exit 2 ;;
esac
