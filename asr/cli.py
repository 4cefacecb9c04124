"""The ``asr`` command line: argparse subcommands, each building a config and calling one library function.

User errors (:class:`asr.errors.AsrError`, missing files, bad values) print one line,
``asr: error: <what>: <reason>``, and exit with status 2. ``asr --debug ...`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asr.errors import AsrError

EXIT_USER_ERROR = 2
EXIT_PARTIAL = 1  # a batch command finished but skipped some bad items


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _overrides(items: list[str] | None) -> dict:
    """Turn ``section.key=value`` strings into ``{section: {key: value}}``."""
    from asr.config import parse_override

    out: dict = {}
    for item in items or []:
        section, key, value = parse_override(item)
        out.setdefault(section, {})[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Subcommands. Each `_add_<name>(sub)` registers a parser whose `func` takes the parsed args and
# returns an exit status. Keep handlers short: parse, build a config, call the library.
# ---------------------------------------------------------------------------------------------


def _add_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer from a manifest's text")
    p.add_argument("--manifest", required=True, type=Path, nargs="+", help="manifest(s) whose text to use")
    p.add_argument("--out", required=True, type=Path, help="output model prefix, e.g. exp/tokenizer")
    p.add_argument("--vocab-size", type=_positive_int, default=256)
    p.add_argument("--model-type", choices=["unigram", "bpe", "char"], default="unigram")
    p.set_defaults(func=_run_tokenizer)


def _run_tokenizer(args) -> int:
    from asr.data.manifest import read_manifest
    from asr.tokenizer import Tokenizer

    texts = [u.text for m in args.manifest for u in read_manifest(m)]
    tok = Tokenizer.train(texts, args.out, args.vocab_size, args.model_type)
    print(f"tokenizer: {tok.model_path} ({tok.vocab_size} pieces)")
    return 0


# >>> command registrations: add your `_add_<name>` to this list (one line each) >>>
COMMANDS = [
    _add_tokenizer,
]
# <<< command registrations <<<


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Listen-Attend-Spell speech recognition toolkit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``asr`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("asr: interrupted", file=sys.stderr)
        return 130
    except AsrError as e:
        if args.debug:
            raise
        print(f"asr: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if args.debug:
            raise
        print(f"asr: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
