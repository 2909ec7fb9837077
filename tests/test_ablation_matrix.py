"""Ablation matrix files: how axes, zipped groups, excludes, named cells and seeds expand into
cells, and how a malformed matrix or an invalid cell is reported (nothing is trained here)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import REPO
from training_cases import MQAR_RECIPE

from miraslab.ablation import cell_problems, load_matrix
from miraslab.ablation.run import cell_state, train_argv
from miraslab.errors import MiraslabError


def write_matrix(directory: Path, body: str, name: str = "grid.toml") -> Path:
    (directory / "base.toml").write_text(MQAR_RECIPE)
    path = directory / name
    path.write_text('base = "base.toml"\n' + textwrap.dedent(body))
    return path


def ids(path: Path) -> list[str]:
    return [cell.id for cell in load_matrix(path).cells]


def test_axes_combine_as_a_product_named_by_the_last_key_part(tmp_path):
    path = write_matrix(
        tmp_path,
        """
        [axes]
        "model.memory.algorithm" = ["gd", "momentum"]
        "model.memory.memory" = ["linear", "mlp"]
        """,
    )
    assert ids(path) == [
        "algorithm=gd,memory=linear",
        "algorithm=gd,memory=mlp",
        "algorithm=momentum,memory=linear",
        "algorithm=momentum,memory=mlp",
    ]


def test_shared_set_comes_first_and_max_steps_is_not_a_recipe_key(tmp_path):
    path = write_matrix(
        tmp_path,
        """
        [set]
        "train.steps" = 3
        max_steps = 2
        [axes]
        "model.memory.algorithm" = ["gd"]
        """,
    )
    matrix = load_matrix(path)
    assert matrix.max_steps == 2
    assert matrix.cells[0].sets == ["train.steps=3", 'model.memory.algorithm="gd"']


def test_zipped_keys_vary_together_under_the_group_name(tmp_path):
    path = write_matrix(
        tmp_path,
        """
        [zip.chunk]
        "model.memory.chunk_size" = [4, 8]
        "train.lr" = [1e-3, 2e-3]
        """,
    )
    matrix = load_matrix(path)
    assert [cell.id for cell in matrix.cells] == ["chunk=4", "chunk=8"]
    assert matrix.cells[1].overrides == {"model.memory.chunk_size": 8, "train.lr": 2e-3}


def test_excluded_combinations_are_left_out_by_value_or_component_name(tmp_path):
    path = write_matrix(
        tmp_path,
        """
        [axes]
        "model.memory.algorithm" = ["gd", { name = "momentum" }]
        "model.memory.memory" = ["linear", "mlp"]
        [[exclude]]
        "model.memory.algorithm" = "momentum"
        "model.memory.memory" = "mlp"
        """,
    )
    assert ids(path) == [
        "algorithm=gd,memory=linear",
        "algorithm=gd,memory=mlp",
        "algorithm=momentum,memory=linear",
    ]


def test_named_values_and_named_cells(tmp_path):
    path = write_matrix(
        tmp_path,
        """
        [axes]
        "model.memory.algorithm" = { plain = "gd", heavy = { name = "momentum" } }
        [cells.muon-mlp]
        "model.memory.algorithm" = "muon"
        "model.memory.memory" = "mlp"
        """,
    )
    matrix = load_matrix(path)
    assert [cell.id for cell in matrix.cells] == ["algorithm=plain", "algorithm=heavy", "muon-mlp"]
    assert matrix.cells[2].overrides == {"model.memory.algorithm": "muon", "model.memory.memory": "mlp"}


def test_seeds_repeat_every_cell_and_group_it_for_the_report(tmp_path):
    path = write_matrix(
        tmp_path,
        """
        seeds = 2
        [axes]
        "model.memory.algorithm" = ["gd", "momentum"]
        """,
    )
    matrix = load_matrix(path)
    assert [cell.id for cell in matrix.cells] == [
        "algorithm=gd,seed=0",
        "algorithm=gd,seed=1",
        "algorithm=momentum,seed=0",
        "algorithm=momentum,seed=1",
    ]
    assert matrix.cells[1].overrides["seed"] == 1
    assert [cell.seed_group for cell in matrix.cells] == ["algorithm=gd"] * 2 + ["algorithm=momentum"] * 2


def test_keys_with_one_last_part_are_told_apart_by_more_of_their_path(tmp_path):
    path = write_matrix(
        tmp_path,
        """
        [axes]
        "model.memory.bias.name" = ["l2"]
        "model.memory.retention.name" = ["none"]
        """,
    )
    assert ids(path) == ["bias.name=l2,retention.name=none"]


def test_cell_ids_are_safe_path_components(tmp_path):
    path = write_matrix(tmp_path, '[axes]\n"data.task.name" = ["a/b c"]\n')
    assert ids(path) == ["name=a-b-c"]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('[axes]\n"train.lr" = 3\n', "axes.train.lr"),
        ('[zip.g]\n"train.lr" = [1, 2]\n"train.steps" = [1]\n', "zip.g"),
        ("seeds = 0\n", "seeds"),
        ("[set]\nmax_steps = 0\n", "set.max_steps"),
        ('[set]\n"train.lr" = 1\n[axes]\n"train.lr" = [1, 2]\n', "train.lr"),
        ('[axes]\n"train.lr" = [1]\n[[exclude]]\n"train.lr" = 1\n', "exclude"),
        ("axis = 1\n", "axis"),
        ("[launch]\nnproc = 0\n", "launch.nproc"),
    ],
)
def test_a_malformed_matrix_is_one_line_naming_the_file_and_key(tmp_path, body, key):
    path = write_matrix(tmp_path, body)
    with pytest.raises(MiraslabError) as error:
        load_matrix(path)
    assert str(error.value).startswith(f"{path.name}: {key}:") or f": {key}:" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_base_names_the_key(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('base = "nowhere.toml"\n')
    with pytest.raises(MiraslabError, match="base: no such recipe file"):
        load_matrix(path)


def test_invalid_cells_carry_the_recipe_s_own_error(tmp_path):
    path = write_matrix(tmp_path, '[axes]\n"model.memory.algorithm" = ["gd", "nope"]\n')
    problems = cell_problems(load_matrix(path), load_matrix(path).cells)
    assert list(problems) == ["algorithm=nope"]
    assert "unknown algorithm 'nope'" in problems["algorithm=nope"][0]


def test_a_cell_runs_as_miraslab_train_and_under_torchrun_with_nproc(tmp_path):
    path = write_matrix(tmp_path, '[set]\nmax_steps = 2\n[axes]\n"train.lr" = [0.01]\n')
    matrix = load_matrix(path)
    cell = matrix.cells[0]
    argv = train_argv(matrix, cell, tmp_path / "run", "new", 1)
    assert argv[1:4] == ["-m", "miraslab", "train"]
    assert argv[4:] == [
        str(matrix.base),
        "--set=train.lr=0.01",
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
    ]
    launched = train_argv(matrix, cell, tmp_path / "run", "interrupted", 4)
    assert launched[1:6] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "-m", "miraslab"]
    assert launched[6:9] == ["train", "--resume", str(tmp_path / "run")]


def test_a_run_short_of_its_target_is_interrupted_and_one_at_it_finished(tmp_path):
    run = tmp_path / "run"
    assert cell_state(run, None) == "new"
    run.mkdir()
    (run / "recipe.toml").write_text("")
    (run / "summary.json").write_text('{"step": 2, "total_steps": 4}')
    assert cell_state(run, None) == "interrupted"
    assert cell_state(run, 2) == "finished"  # the matrix's max_steps is the cell's target


@pytest.mark.parametrize(
    "path", sorted((REPO / "recipes" / "ablations").glob("*.toml")), ids=lambda p: p.name
)
def test_every_shipped_matrix_expands_into_valid_cells(path):
    matrix = load_matrix(path)
    assert len(matrix.cells) >= 4
    assert cell_problems(matrix, matrix.cells) == {}
