"""``miraslab report RUN [--out DIR]``: PNG plots and summary.md of a training run, and
``miraslab report MATRIX.toml [--out DIR]``: the table and plots of an ablation matrix.

The argument is dispatched on what it is: a ``.toml`` file is a matrix, whose ``--out`` is the
root its cells were run into (as for ``miraslab ablate``); anything else is a run directory.
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path
from typing import Any

from ..errors import MiraslabError


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("report", help="plots and a summary of a run: is its memory used?")
    parser.add_argument(
        "target",
        type=Path,
        metavar="RUN",
        help="a run directory written by miraslab train, or a matrix .toml",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the PNGs and summary.md (default RUN/report); "
        "for a matrix: the root its cells ran in (default runs/<matrix>)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise MiraslabError(f"--out {args.out}: is a file, expected the directory the report goes in")
    try:  # a run directory may be named like a file: what it is decides, not its suffix
        if args.target.suffix == ".toml" and not args.target.is_dir():
            return matrix_report(args)
        return run_report(args)
    except OSError as error:  # a full disk, a read-only directory: one line naming the file
        where = error.filename or args.out or args.target
        full = error.errno == errno.ENOSPC
        problem = "the disk is full" if full else (error.strerror or str(error))
        todo = "free some space or choose another --out" if full else "fix that"
        raise MiraslabError(
            f"{where}: {problem}, so the report is incomplete; {todo}, then rerun `miraslab report {args.target}`"
        ) from None


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
    from ..ablation import default_root, load_matrix
    from ..ablation.report import write_matrix_report

    matrix = load_matrix(args.target)
    root = args.out or default_root(matrix)
    if not root.is_dir():
        raise MiraslabError(
            f"{root}: no runs of {args.target} here; run `miraslab ablate {args.target}` first"
        )
    report = write_matrix_report(matrix, root)
    unfinished = [row.cell for row in report.rows if row.status != "finished"]
    print(f"{len(report.rows)} cells" + (f", {len(unfinished)} not finished" if unfinished else ""))
    written = [path.name for path in (report.markdown, report.csv, *report.plots)]
    print(f"wrote {', '.join(written)} to {root}")
    return 0
