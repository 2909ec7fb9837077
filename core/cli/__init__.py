"""The ``miraslab`` command line: one module per command, registered here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import MiraslabError
from . import (
    ablate_command,
    eval_command,
    export_command,
    generate_command,
    plugins_command,
    preflight_command,
    probe_command,
    recipe_command,
    report_command,
    tokenizer_command,
    train_command,
)

COMMANDS = (
    plugins_command,
    recipe_command,
    tokenizer_command,
    train_command,
    generate_command,
    eval_command,
    export_command,
    preflight_command,
    probe_command,
    report_command,
    ablate_command,
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="miraslab",
        description="Compose, train and probe test-time-memory sequence models from TOML recipes.",
    )
    parser.add_argument("--version", action="version", version=f"miraslab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MiraslabError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}" if not line.startswith("error:") else line, file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # a run stopped by a check: one code per cause
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `miraslab plugins | head`
        return 0


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, value in TOML syntax (repeatable): --set train.lr=3e-4",
    )
