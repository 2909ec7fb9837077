"""``miraslab report RUN [--out DIR]``: PNG plots and summary.md of a training run.

The argument is dispatched on what it is: a run directory today; an ablation matrix (a
``.toml`` file) is answered with a one-line error until matrix reports exist.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import MiraslabError


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("report", help="plots and a summary of a run: is its memory used?")
    parser.add_argument("target", type=Path, metavar="RUN", help="a run directory written by miraslab train")
    parser.add_argument(
        "--out", type=Path, help="where to write the PNGs and summary.md (default RUN/report)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.target.suffix == ".toml":
        return matrix_report(args)
    return run_report(args)


def run_report(args: argparse.Namespace) -> int:
    from ..report import build_report

    if not args.target.is_dir():
        raise MiraslabError(f"{args.target}: no such run directory")
    report = build_report(args.target, args.out)
    print(report.sentence.replace("**", ""))
    written = [path.name for path in report.plots.values() if path is not None]
    print(f"wrote {', '.join([*written, report.summary.name])} to {report.out_dir}")
    return 0


def matrix_report(args: argparse.Namespace) -> int:
    raise MiraslabError(
        f"{args.target}: a report of an ablation matrix (a .toml file) is not supported yet; "
        "give a run directory written by miraslab train"
    )
