"""``miraslab ablate MATRIX.toml [--out DIR] [--jobs N] [--nproc N] [--cell ID] [--wait] [--dry-run] [--list]``.

Every cell of the matrix trains into ``runs/<matrix>/<cell>/`` (or ``DIR/<cell>``); a rerun
skips the finished cells and resumes the interrupted ones.  docs/ablations.md has the format.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import MiraslabError


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("ablate", help="run every cell of an ablation matrix (a grid over recipe keys)")
    parser.add_argument("matrix", type=Path, metavar="MATRIX", help="the matrix .toml file")
    parser.add_argument(
        "--out", type=Path, help="where the cells' run directories go (default runs/<matrix>)"
    )
    parser.add_argument(
        "--cell", action="append", default=[], metavar="ID", help="run only this cell (repeatable)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="cells at once, each in its own process (default 1)"
    )
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="processes per cell under torchrun (default: the matrix's [launch])",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the cells and their overrides, run nothing"
    )
    parser.add_argument(
        "--list", action="store_true", help="print the cell ids, one a line (for a SLURM array), run nothing"
    )
    parser.add_argument("--skip-invalid", action="store_true", help="run the valid cells when some are not")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="a cell another process is still training: wait for it to end (default: report it running)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..ablation import cell_problems, default_root, load_matrix, run_matrix
    from ..ablation.run import cell_state
    from ..limits import MAX_CELLS, check_count

    check_count(args.jobs, "--jobs", maximum=MAX_CELLS)
    if args.nproc is not None and args.nproc < 1:
        raise MiraslabError(f"--nproc: expected an integer >= 1, got {args.nproc}")
    matrix = load_matrix(args.matrix)
    cells = [matrix.cell(cell_id) for cell_id in args.cell] or matrix.cells
    root = args.out or default_root(matrix)
    if root.exists() and not root.is_dir():
        raise MiraslabError(f"--out {root}: is a file, expected the directory the cells' runs go in")
    if args.list:
        print("\n".join(cell.id for cell in cells))
        return 0
    if args.dry_run:
        invalid = cell_problems(matrix, cells)
        print(f"{matrix.path}: {len(cells)} cells over {matrix.base}, into {root}/")
        for cell in cells:
            state = "invalid" if cell.id in invalid else cell_state(root / cell.id, matrix.max_steps)
            print(f"{cell.id}  [{state}]")
            for assignment in cell.sets:
                print(f"    --set {assignment}")
            for problem in invalid.get(cell.id, []):
                print(f"    error: {problem}")
        return 2 if invalid else 0
    results = run_matrix(
        matrix, root, cells, jobs=args.jobs, nproc=args.nproc, skip_invalid=args.skip_invalid, wait=args.wait
    )
    width = max(len(result.cell) for result in results)
    print(f"\n{matrix.name}: {len(results)} cells in {root}/")
    for result in results:
        detail = f"  {result.detail}" if result.detail else ""
        print(f"  {result.cell:<{width}}  {result.status}{detail}")
    failed = [result for result in results if result.status in ("failed", "invalid", "running")]
    if failed:
        print(f"{len(failed)} of {len(results)} cells did not finish; rerun to retry them")
        return 1
    print(f"table and plots: miraslab report {args.matrix}" + (f" --out {args.out}" if args.out else ""))
    return 0
