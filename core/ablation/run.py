"""Running a matrix: every cell an ordinary run directory, finished ones skipped, interrupted
ones resumed from their checkpoints, a failing one recorded without stopping the others.

One job trains the cells one after another in this process; ``jobs > 1`` (or ``nproc > 1``,
under torchrun) runs each as ``python -m miraslab train ...`` in its own process, its output in
``CELL/ablate.log``, with the CPU threads split between the jobs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import attrs

from ..bounded_read import MAX_JSON_BYTES, read_bounded_text
from ..errors import MiraslabError
from ..output_paths import path_under
from .matrix import Cell, Matrix, cell_problems

RESULTS_FILE = "ablation.json"
LOG_FILE = "ablate.log"


@attrs.frozen
class CellResult:
    cell: str
    status: str  # trained, resumed, skipped (already finished), running (by another process), failed, invalid
    detail: str = ""


def default_root(matrix: Matrix) -> Path:
    return Path("runs") / matrix.name


def cell_state(run: Path, max_steps: int | None) -> str:
    """``finished``, ``interrupted`` (a run is there, short of its last step) or ``new``."""
    summary = run / "summary.json"
    if summary.is_file():
        try:
            done = json.loads(read_bounded_text(summary, MAX_JSON_BYTES, "summary.json"))
            target = min(done["total_steps"], max_steps or done["total_steps"])
            if done["step"] >= target and not done.get("stopped_by"):
                return "finished"
        except (ValueError, KeyError, TypeError, MiraslabError):
            pass  # a torn summary: the checkpoints say where the run is
    return "interrupted" if (run / "recipe.toml").is_file() else "new"


def train_argv(matrix: Matrix, cell: Cell, run: Path, state: str, nproc: int) -> list[str]:
    """The command that trains (or resumes) one cell; under torchrun when nproc > 1."""
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "-m",
            "miraslab",
        ]
    else:
        launcher = [sys.executable, "-m", "miraslab"]
    if state == "interrupted":
        argv = ["train", "--resume", str(run)]
    else:
        argv = ["train", str(matrix.base), *(f"--set={s}" for s in cell.sets), "--out", str(run)]
    if matrix.max_steps is not None:
        argv += ["--max-steps", str(matrix.max_steps)]
    return [*launcher, *argv]


def threads_per_job(jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // jobs)


def run_matrix(
    matrix: Matrix,
    root: Path,
    cells: Sequence[Cell],
    *,
    jobs: int = 1,
    nproc: int | None = None,
    skip_invalid: bool = False,
    wait: bool = False,
    say: Callable[[str], None] = print,
) -> list[CellResult]:
    """Validate every cell, then run them; refuse to start while one is invalid.

    ``wait``: a cell another process is still training is waited for, then resumed or skipped;
    without it such a cell is reported ``running`` with the command that stops its trainer.
    """
    nproc = nproc or matrix.nproc
    runs = {cell.id: path_under(root, cell.id, f"cell {cell.id}") for cell in cells}
    invalid = cell_problems(matrix, cells)
    if invalid and not skip_invalid:
        lines = [f"cell {cell}: {problem}" for cell, problems in invalid.items() for problem in problems]
        raise MiraslabError(
            "\n".join(
                [
                    *lines,
                    f"{len(invalid)} of {len(cells)} cells of {matrix.path} are invalid and nothing ran; "
                    "fix or [[exclude]] them, or pass --skip-invalid to run the others",
                ]
            )
        )
    results = {cell: CellResult(cell, "invalid", problems[0]) for cell, problems in invalid.items()}
    todo = [cell for cell in cells if cell.id not in invalid]
    if jobs == 1 and nproc == 1:
        for index, cell in enumerate(todo, 1):
            say(f"[{index}/{len(todo)}] {cell.id}")
            results[cell.id] = _run_here(matrix, cell, runs[cell.id], wait, say)
    else:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads_per_job(jobs)),
            "MKL_NUM_THREADS": str(threads_per_job(jobs)),
        }
        children = _Children()
        with children.forwarding_signals(), ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {
                cell.id: pool.submit(
                    _run_process, matrix, cell, runs[cell.id], nproc, env, children, wait, say
                )
                for cell in todo
            }
            for cell_id, future in futures.items():
                results[cell_id] = future.result()
                say(f"{cell_id}: {results[cell_id].status}")
        if children.stopped_by is not None:  # the children got the signal too; record, then stop
            _write_results(root, [results[cell.id] for cell in cells])
            if children.stopped_by == signal.SIGINT:
                raise KeyboardInterrupt
            stopped = MiraslabError(
                f"ablate {matrix.path}: stopped by signal {children.stopped_by}, and so were the trainers "
                "of its running cells; rerun the same command to resume them"
            )
            stopped.exit_code = 128 + children.stopped_by  # type: ignore[attr-defined]  # as a shell reports it
            raise stopped
    ordered = [results[cell.id] for cell in cells]
    _write_results(root, ordered)
    return ordered


class _Children:
    """The trainer processes of a parallel ablate, so that a signal to the parent reaches them.

    They run in their own sessions (a Ctrl-C at the terminal reaches them once, through us),
    and a SIGTERM or SIGINT to the parent is forwarded to each before the parent stops: killing
    only the parent must not leave trainers running that a rerun would then collide with.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self.stopped_by: int | None = None

    def call(self, argv: list[str], **options: object) -> int | None:
        """The child's exit code; None when the parent is stopping and nothing was started."""
        with self._lock:
            if self.stopped_by is not None:
                return None
            child = subprocess.Popen(argv, start_new_session=True, **options)  # type: ignore[call-overload]
            self._running.add(child)
        try:
            return child.wait()
        finally:
            with self._lock:
                self._running.discard(child)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        with self._lock:
            self.stopped_by = signum
            for child in self._running:
                child.send_signal(signum)

    @contextmanager
    def forwarding_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only it may set handlers
            yield
            return
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _start(
    matrix: Matrix, cell: Cell, run: Path, wait: bool = False, say: Callable[[str], None] = print
) -> tuple[str, CellResult | None]:
    """The cell's state, or its result when there is nothing to train (or another process trains it)."""
    from ..train.run_lock import lock_holder

    if holder := lock_holder(run):
        if not wait:
            pid = holder.split()[1] if holder.startswith("pid ") else "PID"
            return "running", CellResult(
                cell.id,
                "running",
                f"{holder} is still training it; rerun with --wait to wait for it, or stop it with "
                f"`kill {pid}` (it resumes from its last checkpoint)",
            )
        say(f"{cell.id}: waiting for {holder}, which is still training it")
        lock_holder(run, wait=True)
    state = cell_state(run, matrix.max_steps)
    if state == "finished":
        return state, CellResult(cell.id, "skipped", "finished before")
    if state == "interrupted" and (changed := _recipe_changed(matrix, cell, run)):
        return state, CellResult(cell.id, "failed", changed)
    return state, None


def _recipe_changed(matrix: Matrix, cell: Cell, run: Path) -> str:
    """A run left by another version of the matrix is not resumed as this cell."""
    from ..recipe.resolve import load_recipe, recipe_to_dict
    from ..train.run_dir import RunDir

    try:
        stored = recipe_to_dict(RunDir(run).load_recipe())
    except MiraslabError as exc:
        return str(exc).splitlines()[0]
    if stored != recipe_to_dict(load_recipe(matrix.base, cell.sets)):
        return f"{run} holds a run of another recipe (did the matrix change?); remove it to train this cell afresh"
    return ""


def _run_here(
    matrix: Matrix, cell: Cell, run: Path, wait: bool = False, say: Callable[[str], None] = print
) -> CellResult:
    from ..recipe.resolve import load_recipe
    from ..train.run_dir import RunDir
    from ..train.trainer import Trainer

    state, result = _start(matrix, cell, run, wait, say)
    if result is not None:
        return result
    try:
        if state == "interrupted":
            Trainer(RunDir(run).load_recipe(), run, resume=True, max_steps=matrix.max_steps).run()
        else:
            Trainer(load_recipe(matrix.base, cell.sets), run, max_steps=matrix.max_steps).run()
    except MiraslabError as exc:
        return CellResult(cell.id, "failed", str(exc).splitlines()[0])
    except Exception as exc:  # a bug in one cell's combination must not cost the others
        return CellResult(cell.id, "failed", f"{type(exc).__name__}: {exc}")
    return CellResult(cell.id, "resumed" if state == "interrupted" else "trained")


def _run_process(
    matrix: Matrix,
    cell: Cell,
    run: Path,
    nproc: int,
    env: dict[str, str],
    children: _Children,
    wait: bool = False,
    say: Callable[[str], None] = print,
) -> CellResult:
    if children.stopped_by is not None:
        return CellResult(cell.id, "failed", "not started: ablate was stopped")
    state, result = _start(matrix, cell, run, wait, say)
    if result is not None:
        return result
    run.mkdir(parents=True, exist_ok=True)
    log = run / LOG_FILE
    with open(log, "a", encoding="utf-8") as out:
        code = children.call(
            train_argv(matrix, cell, run, state, nproc), stdout=out, stderr=subprocess.STDOUT, env=env
        )
    if code is None:
        return CellResult(cell.id, "failed", "not started: ablate was stopped")
    if code != 0:
        errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error:")]
        detail = errors[-1].removeprefix("error: ") if errors else f"exit code {code}, see {log}"
        return CellResult(cell.id, "failed", detail)
    return CellResult(cell.id, "resumed" if state == "interrupted" else "trained")


def _write_results(root: Path, results: Sequence[CellResult]) -> None:
    """ROOT/ablation.json: every cell's latest outcome (a --cell run updates its own entry)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / RESULTS_FILE
    known: dict[str, dict[str, str]] = {}
    if path.is_file():
        try:
            known = {entry["cell"]: entry for entry in json.loads(read_bounded_text(path, MAX_JSON_BYTES))}
        except (ValueError, KeyError, TypeError, MiraslabError):
            known = {}
    known.update({result.cell: attrs.asdict(result) for result in results})
    partial = path.with_suffix(f".{os.getpid()}.tmp")  # whole or not at all, with array jobs side by side
    partial.write_text(json.dumps(list(known.values()), indent=2) + "\n")
    partial.replace(path)
