"""``miraslab eval``: accuracy overall and by key-to-query distance, as text and JSON."""

from __future__ import annotations

import json
import sys

import pytest
from training_cases import MQAR_RECIPE as RECIPE

import miraslab
from miraslab.cli import main
from miraslab.evaluation import distance_bucket
from miraslab.train.trainer import Trainer


@pytest.fixture(scope="module")
def mqar_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("eval")
    (directory / "mqar.toml").write_text(RECIPE)
    recipe = miraslab.load_recipe(directory / "mqar.toml")
    Trainer(recipe, directory / "run", show_progress=False).run()
    return directory / "run"


def eval_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_holds_accuracy_and_buckets_that_add_up(mqar_run, capsys):
    result = eval_json(capsys, str(mqar_run), "--batches", "3")
    assert {"accuracy", "by_distance", "loss", "answers", "step", "task"} <= result.keys()
    assert result["task"] == "mqar" and result["step"] == 4
    assert result["answers"] == 3 * 4 * 4  # batches x rows x pairs, each key asked once
    buckets = result["by_distance"]
    assert sum(b["answers"] for b in buckets) == result["answers"]
    hits = sum(b["accuracy"] * b["answers"] for b in buckets)
    assert hits == pytest.approx(result["accuracy"] * result["answers"])
    # min_query_distance = 9: no answer closer than 9 tokens to its key
    assert all(b["to"] > 9 for b in buckets) and buckets[0]["from"] >= 8


def test_a_task_setting_changes_what_is_asked(mqar_run, capsys):
    near = eval_json(capsys, str(mqar_run), "--set", "task.min_query_distance=2", "--batches", "3")
    assert min(b["from"] for b in near["by_distance"]) < 8


def test_text_output_and_a_bad_key_is_one_line(mqar_run, capsys):
    assert main(["eval", str(mqar_run), "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "on mqar, memory carried: accuracy" in out and "distance" in out
    assert main(["eval", str(mqar_run), "--set", "task.vocab_sise=3"]) == 2
    assert "data.task.vocab_sise: unknown key" in capsys.readouterr().err


def test_memory_all_evaluates_the_same_batches_carried_reset_and_zeroed(mqar_run, capsys):
    result = eval_json(capsys, str(mqar_run), "--memory", "all", "--batches", "2")
    modes = result["by_memory"]
    assert list(modes) == ["carried", "reset", "zero"]
    assert {m["answers"] for m in modes.values()} == {2 * 4 * 4}
    carried = eval_json(capsys, str(mqar_run), "--batches", "2")
    assert modes["carried"]["loss"] == pytest.approx(carried["loss"])  # the mode is restored between
    reset = eval_json(capsys, str(mqar_run), "--memory", "reset", "--batches", "2")
    assert reset["memory"] == "reset" and reset["loss"] == pytest.approx(modes["reset"]["loss"])
    assert modes["reset"]["loss"] != pytest.approx(carried["loss"], rel=1e-6)  # the ablation acts


def test_distance_buckets_are_powers_of_two():
    assert [distance_bucket(d) for d in (1, 2, 3, 4, 9, 64)] == [
        (1, 2),
        (2, 4),
        (2, 4),
        (4, 8),
        (8, 16),
        (64, 128),
    ]


def test_lm_eval_without_the_eval_extra_is_one_line(mqar_run, capsys, monkeypatch):
    """The harness missing (a None entry makes its import fail, installed or not): the extra to install."""
    pytest.importorskip("transformers")
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert main(["eval", str(mqar_run), "--lm-eval", "hellaswag"]) == 2
    assert capsys.readouterr().err == (
        "error: --lm-eval needs lm-evaluation-harness with its transformers backend: "
        "pip install 'miraslab[eval]'\n"
    )
