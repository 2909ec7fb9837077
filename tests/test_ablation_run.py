"""``miraslab ablate`` and ``miraslab report MATRIX``: a 4-cell matrix of 2-step MQAR runs
goes end to end, a rerun trains nothing, an interrupted cell resumes, an invalid cell stops
the matrix before anything trains, and the report has one row per cell and valid PNGs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO
from matplotlib.image import imread
from training_cases import MQAR_RECIPE

import miraslab
from miraslab.ablation import load_matrix, run_matrix
from miraslab.cli import main
from miraslab.train.trainer import Trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CELLS = [
    "algorithm=gd,memory=linear",
    "algorithm=gd,memory=mlp",
    "algorithm=momentum,memory=linear",
    "algorithm=momentum,memory=mlp",
]
GRID = """
[set]
"train.steps" = 2
"train.eval_every" = 2
"train.checkpoint_every" = 1
[axes]
"model.memory.algorithm" = ["gd", "momentum"]
"model.memory.memory" = ["linear", "mlp"]
"""


def write_matrix(directory: Path, body: str = GRID) -> Path:
    (directory / "base.toml").write_text(MQAR_RECIPE)
    path = directory / "grid.toml"
    path.write_text('base = "base.toml"\n' + textwrap.dedent(body))
    return path


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, Path, str]:
    """The four cells trained once in this process: (matrix, root, what ablate printed)."""
    directory = tmp_path_factory.mktemp("grid")
    matrix = write_matrix(directory)
    code, printed = cli("ablate", str(matrix), "--out", str(directory / "runs"))
    assert code == 0, printed
    return matrix, directory / "runs", printed


def test_every_cell_is_an_ordinary_finished_run_directory(grid):
    _, root, printed = grid
    for cell in CELLS:
        summary = json.loads((root / cell / "summary.json").read_text())
        assert summary["step"] == summary["total_steps"] == 2
        assert re.search(rf"^  {re.escape(cell)} +trained$", printed, re.MULTILINE)
    stored = miraslab.load_recipe(root / "algorithm=momentum,memory=mlp" / "recipe.toml")
    assert (stored.model.memory.algorithm.name, stored.model.memory.memory.name) == ("momentum", "mlp")


def test_a_rerun_skips_every_finished_cell(grid):
    matrix, root, _ = grid
    before = {cell: (root / cell / "metrics.jsonl").read_text() for cell in CELLS}
    results = run_matrix(load_matrix(matrix), root, load_matrix(matrix).cells, say=lambda _: None)
    assert [result.status for result in results] == ["skipped"] * 4
    assert before == {cell: (root / cell / "metrics.jsonl").read_text() for cell in CELLS}


def test_the_report_has_a_row_per_cell_and_valid_plots(grid):
    matrix, root, _ = grid
    code, printed = cli("report", str(matrix), "--out", str(root))
    assert code == 0, printed
    with open(root / "report.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert [row["cell"] for row in rows] == CELLS
    assert all(float(row["val_loss_mean"]) > 0 and row["val_accuracy_mean"] != "" for row in rows)
    assert all(row["carry_gain_mean"] != "" and row["reset_accuracy_mean"] != "" for row in rows)
    markdown = (root / "report.md").read_text()
    assert sum(line.startswith(f"| {cell} |") for cell in CELLS for line in markdown.splitlines()) == 4
    for name in ("loss_curves.png", "main_metric.png"):
        assert (root / name).read_bytes()[:8] == PNG_SIGNATURE
        assert imread(root / name).ndim == 3


def test_seeds_are_averaged_into_one_row_with_a_std(tmp_path, grid):
    _, root, _ = grid
    body = '[set]\n"train.steps" = 2\n[axes]\n"model.memory.memory" = ["linear"]\n'
    matrix = write_matrix(tmp_path, "seeds = 2\n" + body)
    # two finished runs as seeds of one cell: the report reads their metrics, nothing trains
    for seed, source in enumerate(CELLS[:3:2]):
        shutil.copytree(root / source, tmp_path / "runs" / f"memory=linear,seed={seed}")
    assert cli("report", str(matrix), "--out", str(tmp_path / "runs"))[0] == 0
    with open(tmp_path / "runs" / "report.csv", newline="") as table:
        (row,) = csv.DictReader(table)
    assert row["cell"] == "memory=linear" and row["seeds"] == "2"
    assert float(row["val_loss_std"]) > 0


def test_an_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    matrix_path = write_matrix(tmp_path, GRID.replace('"train.steps" = 2', '"train.steps" = 3'))
    matrix = load_matrix(matrix_path)
    cell = matrix.cell("algorithm=gd,memory=linear")
    run = tmp_path / "runs" / cell.id
    recipe = miraslab.load_recipe(matrix.base, cell.sets)
    Trainer(recipe, run, max_steps=1, show_progress=False).run()  # stopped at step 1 of 3
    (result,) = run_matrix(matrix, tmp_path / "runs", [cell], say=lambda _: None)
    assert result.status == "resumed"
    assert json.loads((run / "summary.json").read_text())["step"] == 3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(1) == 1  # step 1 was not trained again


def test_an_invalid_cell_is_reported_before_anything_runs(tmp_path):
    matrix = write_matrix(tmp_path, GRID.replace('["gd", "momentum"]', '["gd", "nope"]'))
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        assert main(["ablate", str(matrix), "--out", str(tmp_path / "runs")]) == 2
    assert "cell algorithm=nope,memory=linear: " in out.getvalue()
    assert "unknown algorithm 'nope'" in out.getvalue()
    assert "--skip-invalid" in out.getvalue()
    assert not (tmp_path / "runs").exists()


def test_a_failing_cell_does_not_stop_the_others(tmp_path):
    # valid as a recipe, but its corpus is found missing only when the run builds its data
    missing = '{ name = "text", dataset = "no-such-corpus.txt", vocab_size = 300 }'
    matrix = write_matrix(
        tmp_path, GRID.split("[axes]")[0] + f'[axes]\n"data.task" = {{ missing = {missing} }}\n'
    )
    with open(matrix, "a") as grid:
        grid.write('[cells.mqar]\n"train.lr" = 2e-3\n')
    code, printed = cli("ablate", str(matrix), "--out", str(tmp_path / "runs"))
    assert code == 1
    assert re.search(r"^  task=missing +failed +data.task.dataset: no files match", printed, re.MULTILINE)
    results = json.loads((tmp_path / "runs" / "ablation.json").read_text())
    assert [entry["status"] for entry in results] == ["failed", "trained"]


def test_a_run_of_another_recipe_in_a_cell_s_place_is_not_resumed(tmp_path):
    matrix = load_matrix(write_matrix(tmp_path, GRID.replace('["gd", "momentum"]', '["gd"]')))
    stale = tmp_path / "runs" / matrix.cells[0].id
    Trainer(miraslab.load_recipe(matrix.base), stale, max_steps=1, show_progress=False).run()
    first, second = run_matrix(matrix, tmp_path / "runs", matrix.cells, say=lambda _: None)
    assert (first.status, second.status) == ("failed", "trained")
    assert "another recipe" in first.detail


def test_dry_run_prints_cells_and_overrides_and_trains_nothing(tmp_path):
    matrix = write_matrix(tmp_path)
    code, printed = cli("ablate", str(matrix), "--out", str(tmp_path / "runs"), "--dry-run")
    assert code == 0
    assert [line.split()[0] for line in printed.splitlines() if line.endswith("[new]")] == CELLS
    assert '    --set model.memory.memory="mlp"' in printed
    assert not (tmp_path / "runs").exists()


def test_list_prints_one_cell_id_a_line_for_a_slurm_array(tmp_path):
    code, printed = cli("ablate", str(write_matrix(tmp_path)), "--list")
    assert code == 0 and printed.splitlines() == CELLS


@pytest.mark.slow
def test_nox_ablate_runs_the_matrix_and_one_cell_by_id(tmp_path):
    write_matrix(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nox = [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), "-s", "ablate", "--"]
    one = subprocess.run(
        [*nox, "grid.toml", "--cell", CELLS[1]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stdout + one.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "grid").iterdir() if p.is_dir()) == [CELLS[1]]
    every = subprocess.run(
        [*nox, "grid.toml", "--jobs", "2"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert every.returncode == 0, every.stdout + every.stderr
    statuses = {
        e["cell"]: e["status"] for e in json.loads((tmp_path / "runs/grid/ablation.json").read_text())
    }
    assert statuses == {CELLS[0]: "trained", CELLS[1]: "skipped", CELLS[2]: "trained", CELLS[3]: "trained"}


@pytest.mark.slow
def test_a_cell_runs_under_torchrun_with_two_processes(tmp_path):
    """[launch] nproc = 2: the cell trains under torchrun (gloo on CPU) and is an ordinary run."""
    matrix = write_matrix(tmp_path, GRID.replace("[axes]", "[launch]\nnproc = 2\n[axes]"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "miraslab",
        "ablate",
        str(matrix),
        "--cell",
        CELLS[0],
        "--out",
        str(tmp_path / "runs"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "runs" / CELLS[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 2
    log = (run / "ablate.log").read_text() if (run / "ablate.log").exists() else result.stdout + result.stderr
    assert "2 process(es)" in log, log
