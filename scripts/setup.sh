#!/usr/bin/env bash
# Set up the project: Debian packages (when root), a virtual environment, and the package.
# Idempotent: a second run checks a stamp and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# chromium and chromium-driver: the browser test of `asr serve` drives the page in headless Chromium.
DEB_PKGS="flite espeak-ng wordnet-base sox libsndfile1 chromium chromium-driver"

missing_debs() {
  local m=()
  for p in $DEB_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || m+=("$p")
  done
  echo "${m[@]:-}"
}

# A usable environment has pip: a `python3 -m venv` that failed for want of ensurepip leaves bin/python.
venv_ok() { "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }
can_make_venv() { "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; }

missing=$(missing_debs)
# Debian ships venv's pip bootstrap (ensurepip) in python3-venv; without it `python3 -m venv` fails.
if ! venv_ok && ! can_make_venv; then
  missing="${missing:+$missing }python3-venv"
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "[setup] installing Debian packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "[setup] missing Debian packages: $missing"
    echo "[setup] run:  sudo apt-get install -y $missing"
    echo "[setup] (continuing; corpus synthesis needs them)"
  fi
fi
if ! venv_ok && ! can_make_venv; then
  echo "[setup] error: '$PYTHON -m venv' cannot create an environment (no ensurepip):" \
    "run  sudo apt-get install -y python3-venv  and run the set-up again" >&2
  exit 1
fi

STAMP="$VENV/.setup-stamp"
HASH=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
if ! venv_ok; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv --clear "$VENV"
fi
echo "[setup] installing the package and its dependencies (torch pinned to the CPU build)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt torch==2.13.0
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]"
echo "$HASH" > "$STAMP"
