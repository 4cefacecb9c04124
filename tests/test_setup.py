"""scripts/setup.sh on a fresh Debian machine whose Python lacks venv's pip bootstrap (python3-venv).

apt-get, dpkg-query and id are replaced by stubs on PATH that record their calls, so the test
installs nothing and runs as root or not at will.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


@pytest.mark.parametrize("uid", [0, 1000])
def test_setup_installs_python3_venv_when_missing(tmp_path, uid):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "apt.log"
    _stub(stubs, "apt-get", f'echo "$*" >> {calls}')
    _stub(stubs, "dpkg-query", 'echo "install ok installed"')  # every other package is there
    _stub(stubs, "id", f'[ "${{1:-}}" = -u ] && echo {uid} || command id "$@"')
    # A Python whose ensurepip is missing, as Debian's python3 without python3-venv.
    _stub(stubs, "python3-no-venv", 'case "$*" in *ensurepip*) exit 1 ;; esac; exec python3 "$@"')
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "VENV": str(tmp_path / "venv"),
           "PYTHON": str(stubs / "python3-no-venv")}
    r = subprocess.run(["bash", str(REPO / "scripts/setup.sh")], capture_output=True, text=True, env=env,
                       timeout=60)
    out = r.stdout + r.stderr
    # The stubbed apt-get installs nothing, so the set-up then stops with the one line to run.
    assert r.returncode == 1 and "sudo apt-get install -y python3-venv" in out, out
    assert not (tmp_path / "venv").exists()
    apt = calls.read_text().splitlines() if calls.exists() else []
    if uid == 0:
        assert any(line.startswith("install") and "python3-venv" in line.split() for line in apt), apt
    else:
        assert apt == [], "apt-get must not run without root"
