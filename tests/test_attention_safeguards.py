"""Safeguards against a hybrid bypassing its memory: SWAX's stochastic training window and
attention-branch dropout (model.attention.train_window, branch_dropout)."""

from __future__ import annotations

import pytest
import torch
from training_cases import MQAR_RECIPE

import miraslab
from miraslab.errors import RecipeError
from miraslab.model.attention import drop_context
from miraslab.model.attention_safeguards import set_training_windows, window_at_step
from miraslab.model.language_model import build_model
from miraslab.train.checkpoint import load_checkpoint
from miraslab.train.run_dir import RunDir
from miraslab.train.trainer import Trainer

# MQAR_RECIPE: layout mal, window 4, seq 32
TINY = ["model.d_model=16", "model.n_layers=2"]


def model_with(write_recipe, sets: list[str]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(miraslab.load_recipe(write_recipe("r.toml", MQAR_RECIPE), [*TINY, *sets]))


def test_the_window_is_drawn_in_its_range_from_the_seed_and_step_alone():
    windows = [window_at_step(2, 9, seed=3, step=step) for step in range(200)]
    assert set(windows) == set(range(2, 10))  # every window of the range, none outside
    assert windows == [
        window_at_step(2, 9, seed=3, step=step) for step in range(200)
    ]  # a resume redraws them
    assert windows != [window_at_step(2, 9, seed=4, step=step) for step in range(200)]


def test_evaluation_uses_the_nominal_window_and_training_the_drawn_one(write_recipe):
    varied = model_with(write_recipe, ["model.attention.train_window=[1, 2]"])
    ids = torch.randint(0, 64, (2, 32))
    drawn = set_training_windows(varied, seed=0, step=5)
    assert drawn in (1, 2)
    for window, mode in ((4, "eval"), (drawn, "train")):
        fixed = model_with(write_recipe, [f"model.attention.window={window}"])
        fixed.load_state_dict(varied.state_dict())
        getattr(varied, mode)(), getattr(fixed, mode)()
        assert torch.equal(varied(ids), fixed(ids)), mode  # exactly: the same computation
    varied.eval()
    assert not torch.equal(varied(ids), fixed.eval()(ids))  # window 4 != the drawn one


def test_a_resumed_run_with_a_training_window_ends_bitwise_where_a_straight_one_does(write_recipe, tmp_path):
    recipe = miraslab.load_recipe(
        write_recipe("r.toml", MQAR_RECIPE),
        ["model.attention.train_window=[1, 8]", "train.checkpoint_every=2", "train.eval_every=0"],
    )
    straight_run = Trainer(recipe, tmp_path / "straight", show_progress=False)
    straight_run.run()
    last_step = window_at_step(1, 8, recipe.seed, recipe.train.steps - 1)  # the trainer draws per step
    assert {m.step_window for m in straight_run.raw.modules() if hasattr(m, "step_window")} == {last_step}
    Trainer(recipe, tmp_path / "resumed", max_steps=2, show_progress=False).run()
    Trainer(
        RunDir(tmp_path / "resumed").load_recipe(), tmp_path / "resumed", resume=True, show_progress=False
    ).run()
    straight, resumed = (
        load_checkpoint(tmp_path / "straight").model,
        load_checkpoint(tmp_path / "resumed").model,
    )
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_branch_dropout_off_is_the_model_of_today_and_draws_no_random_numbers(write_recipe):
    default, off = (
        model_with(write_recipe, []),
        model_with(write_recipe, ["model.attention.branch_dropout=0"]),
    )
    off.load_state_dict(default.state_dict())
    ids = torch.randint(0, 64, (2, 32))
    default.train(), off.train()
    before = torch.get_rng_state()
    assert torch.equal(default(ids), off(ids))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_dropped_token_reads_only_itself_and_row_dropout_drops_whole_rows():
    torch.manual_seed(1)
    out, own = torch.randn(64, 2, 16, 4), torch.randn(64, 2, 16, 4)
    tokens = drop_context(out, own, 0.5, "token")
    from_own = (tokens == own).all(dim=(1, 3))  # (B, T): every head of a token dropped together
    assert torch.equal(from_own, ~(tokens == out).all(dim=(1, 3)))
    assert 0.4 < from_own.float().mean() < 0.6
    rows = (drop_context(out, own, 0.5, "row") == own).all(dim=(1, 3))
    assert torch.equal(rows.all(1), rows.any(1)) and 0 < rows.all(1).sum() < 64


def test_branch_dropout_changes_training_only(write_recipe):
    default, dropped = (
        model_with(write_recipe, []),
        model_with(write_recipe, ["model.attention.branch_dropout=0.5"]),
    )
    dropped.load_state_dict(default.state_dict())
    ids = torch.randint(0, 64, (2, 32))
    assert torch.equal(default.eval()(ids), dropped.eval()(ids))
    assert not torch.equal(default.train()(ids), dropped.train()(ids))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["model.attention.train_window=[8, 2]"],
            "train_window: expected two windows [low, high] with 1 <= low <= high, got [8, 2]",
        ),
        (
            ["model.attention.window=0", "model.attention.train_window=[2, 8]"],
            "train_window: expected a sliding window",
        ),
        (
            ["model.attention.branch_dropout=1"],
            "model.attention.branch_dropout: expected a number in [0, 1), got 1",
        ),
    ],
)
def test_a_bad_key_is_a_one_line_error_naming_file_and_key(write_recipe, sets, message):
    with pytest.raises(RecipeError) as error:
        miraslab.load_recipe(write_recipe("r.toml", MQAR_RECIPE), sets)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_branch_dropout_without_a_memory_is_refused(write_recipe):
    with pytest.raises(RecipeError, match=r"model\.attention\.branch_dropout: .* layout 'swa' has no memory"):
        model_with(write_recipe, ['model.layout="swa"', "model.attention.branch_dropout=0.2"])
