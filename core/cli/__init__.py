"""The ``miraslab`` command line: one module per command, registered here."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import MiraslabError, PluginError, PluginWarning, ProvenanceWarning
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
    parser.add_argument("--traceback", "--debug", dest="traceback", action="store_true", help=TRACEBACK_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    for leaf in _leaf_parsers(parser):  # also after the command: `miraslab train R --traceback`
        if leaf is not parser:
            leaf.add_argument(
                "--traceback", "--debug", dest="traceback", action="store_true",
                default=argparse.SUPPRESS, help=TRACEBACK_HELP,
            )  # fmt: skip
    return parser


TRACEBACK_HELP = "on an error, print the full chained traceback too (also MIRASLAB_TRACEBACK=1)"
UNEXPECTED_HINT = "(rerun with --traceback for the full traceback)"


def _leaf_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                yield from _leaf_parsers(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show_traceback = args.traceback or os.environ.get("MIRASLAB_TRACEBACK", "") not in ("", "0")
    with warnings.catch_warnings():
        warnings.showwarning = functools.partial(_show_warning, show_traceback)
        try:
            return int(args.run(args) or 0)
        except MiraslabError as exc:
            if show_traceback:
                print_traceback(exc)
            # a plugin's own bug is not bad input: its traceback is where to look
            hint = f" {UNEXPECTED_HINT}" if isinstance(exc, PluginError) and not show_traceback else ""
            lines = str(exc).splitlines() or [type(exc).__name__]
            lines[-1] += hint
            for line in lines:
                print(f"error: {line}" if not line.startswith("error:") else line, file=sys.stderr)
            return getattr(exc, "exit_code", 2)  # a run stopped by a check: one code per cause
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `miraslab plugins | head`
            return 0
        except Exception as exc:  # a bug (ours or a library's): one line, the traceback on request
            if show_traceback:
                print_traceback(exc)
                hint = ""
            else:
                hint = f" {UNEXPECTED_HINT}"
            first = (str(exc).strip().splitlines() or [""])[0]
            print(f"error: unexpected {type(exc).__name__}: {first}{hint}", file=sys.stderr)
            return 1


def print_traceback(exc: BaseException) -> None:
    """The whole chain, including the causes a one-line error hid with ``raise ... from None``."""
    _unsuppress(exc, set())
    traceback.print_exception(exc, file=sys.stderr)


def _unsuppress(exc: BaseException | None, seen: set[int]) -> None:
    if exc is None or id(exc) in seen:
        return
    seen.add(id(exc))
    exc.__suppress_context__ = False
    _unsuppress(exc.__cause__, seen)
    _unsuppress(exc.__context__, seen)
    for inner in getattr(exc, "exceptions", ()):  # exception groups (cattrs reports through them)
        _unsuppress(inner, seen)


def _show_warning(
    show_traceback: bool, message: Any, category: type[Warning], filename: str, lineno: int, *rest: Any
) -> None:
    """miraslab's own warnings as ``warning: ...`` lines; others the way Python shows them."""
    if issubclass(category, (PluginWarning, ProvenanceWarning)):
        cause = getattr(message, "cause", None)
        if show_traceback and cause is not None:  # what broke a skipped plugin
            print_traceback(cause)
        print(f"warning: {message}", file=sys.stderr)
    else:
        warnings._showwarnmsg_impl(  # type: ignore[attr-defined]
            warnings.WarningMessage(message, category, filename, lineno, *rest)
        )


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, value in TOML syntax (repeatable): --set train.lr=3e-4",
    )
