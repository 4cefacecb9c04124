"""Every subcommand of the ``asr`` CLI answers ``--help`` with its usage and exit status 0."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from asr.cli import build_parser, main


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser tree, e.g. ("manifest", "import", "fsdd")."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


PATHS = _command_paths(build_parser())


def test_the_tree_has_the_documented_commands():
    top = {p[0] for p in PATHS}
    assert {"corpus", "manifest", "features", "tokenizer", "train", "average", "decode", "transcribe", "score",
            "results"} <= top
    assert ("manifest", "import", "fsdd") in PATHS and ("manifest", "import", "tsv") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: asr {' '.join(path)}"), out[:200]
    assert "-h, --help" in out


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "asr", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: asr")
    for name in {p[0] for p in PATHS}:
        assert name in r.stdout
