"""The trainer on a task with answers (labels IGNORE elsewhere): MQAR batches end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from training_cases import MQAR_RECIPE as RECIPE

import miraslab
from miraslab.data.batch import IGNORE, TrainingBatch
from miraslab.train.run_dir import RunDir, load_run
from miraslab.train.trainer import Trainer


def train(write_recipe, out, sets=()) -> list[dict]:
    recipe = miraslab.load_recipe(write_recipe("mqar.toml", RECIPE), sets)
    Trainer(recipe, out, show_progress=False).run()
    return list(RunDir(out).metrics())


def test_the_loss_counts_only_the_answers_and_evaluation_reports_accuracy(write_recipe, tmp_path):
    metrics = train(write_recipe, tmp_path / "run")
    steps = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if m.get("event") == "eval"]
    assert len(steps) == 4 and all(torch.isfinite(torch.tensor(m["loss"])) for m in steps)
    assert [m["step"] for m in evals] == [2, 4]
    # at initialisation the logits are near zero: the mean over the answers is near log(vocab);
    # a sum over the answers divided by every position would be an eighth of it
    assert steps[0]["loss"] == pytest.approx(math.log(64), abs=0.1)
    # the last evaluation, recomputed by hand from the saved model and the task's val batches:
    # cross-entropy and argmax accuracy over the answer positions alone
    run = load_run(tmp_path / "run")
    task = miraslab.build_component(run.recipe.data.task)
    val = task.batches("val", seq_len=32, batch_size=4, seed=run.recipe.seed)
    losses, correct, asked = [], 0, 0
    with torch.no_grad():
        for _ in range(2):
            batch = next(val)
            logits = run.model(batch["inputs"])
            answers = batch["labels"] != IGNORE
            losses.append(F.cross_entropy(logits[answers], batch["labels"][answers]).item())
            correct += int((logits[answers].argmax(-1) == batch["labels"][answers]).sum())
            asked += int(answers.sum())
    assert evals[-1]["val_loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert evals[-1]["val_accuracy"] == pytest.approx(correct / asked)


def test_micro_batches_give_the_whole_batch_mean_over_answers(write_recipe, tmp_path):
    """Tolerance: relative 1e-5 per logged loss (float summation order differs)."""
    whole = [m["loss"] for m in train(write_recipe, tmp_path / "whole") if "loss" in m]
    micro = train(write_recipe, tmp_path / "micro", ["train.micro_batch_size=1"])
    for a, b in zip(whole, [m["loss"] for m in micro if "loss" in m], strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)


def test_a_text_row_and_a_labelled_dict_give_inputs_and_targets():
    rows = torch.arange(12).view(2, 6)
    text = TrainingBatch.of(rows)
    assert torch.equal(text.inputs, rows[:, :-1]) and torch.equal(text.targets, rows[:, 1:])
    assert text.labelled == 10
    labels = torch.full((2, 5), IGNORE)
    labels[:, 3] = 7
    batch = TrainingBatch.of({"inputs": rows[:, :5], "labels": labels, "distance": labels.clamp_min(0)})
    assert batch.labelled == 2 and set(batch.extras) == {"distance"}
    halves = batch.split(1)
    assert [piece.rows for piece in halves] == [1, 1] and halves[1].extras["distance"].shape == (1, 5)
    with pytest.raises(TypeError, match="a token tensor or a dict with 'inputs' and 'labels'"):
        TrainingBatch.of({"tokens": rows})
