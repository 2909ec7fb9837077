"""The precision guard: an update below the resolution of a parameter's dtype is reported."""

from __future__ import annotations

import pytest
import torch
from training_cases import MQAR_RECIPE

import miraslab
from miraslab.errors import RunStopped
from miraslab.plugins.monitor.precision_guard import PrecisionGuard, PrecisionGuardParams, resolution
from miraslab.train.run_dir import RunDir
from miraslab.train.trainer import RunContext, Trainer


class Gain(torch.nn.Module):
    """The TNT-Atlas seed's case: a learnable gain at 5.0."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.full((8,), 5.0, dtype=dtype))


def steps(dtype: torch.dtype, action: str = "warn") -> tuple[RunContext, torch.Tensor, torch.Tensor]:
    model = Gain(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    before = model.gain.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        (model.gain.float() * torch.linspace(-1, 1, 8)).sum().backward()
        optimizer.step()
    run = RunContext(recipe=None, out_dir=".", model=model, step=3, optimizer=optimizer)
    metrics: dict = {}
    PrecisionGuard(PrecisionGuardParams(action=action)).on_step_end(run, metrics)
    return run, metrics, model.gain.detach() - before


def test_bf16_resolution_at_five_is_a_thirty_second():
    assert float(resolution(torch.tensor([5.0], dtype=torch.bfloat16))[0]) == 2**-5
    assert float(resolution(torch.tensor([5.0]))[0]) == 2**-21


def test_a_bf16_gain_whose_updates_round_away_is_reported(capsys):
    _, metrics, moved = steps(torch.bfloat16)
    assert torch.count_nonzero(moved) == 0  # the premise: three AdamW steps changed nothing
    (message,) = metrics["precision_warning"]
    assert "precision: gain (bfloat16) at |value| 5 resolves 0.0312; its typical update 1e-05" in message
    assert "100% of its updates round away" in message and metrics["precision/params_below_resolution"] == 1
    assert "warning: precision: gain" in capsys.readouterr().err
    stopped, _, _ = steps(torch.bfloat16, action="stop")
    assert stopped.stop_cause == "precision" and stopped.stop_reason.startswith("precision: gain")


def test_the_same_gain_in_fp32_moves_and_passes():
    run, metrics, moved = steps(torch.float32)
    assert torch.count_nonzero(moved) == 8
    assert "precision_warning" not in metrics and run.stop_reason is None


def test_a_run_under_bf16_autocast_keeps_fp32_parameters_and_passes(write_recipe, tmp_path):
    """The trainer keeps fp32 parameters under bf16 autocast: nothing is below resolution."""
    monitors = '[[monitors]]\nname = "precision_guard"\naction = "stop"\n'
    recipe = miraslab.load_recipe(write_recipe("r.toml", MQAR_RECIPE + monitors), ['train.precision="bf16"'])
    summary = Trainer(recipe, tmp_path / "run", show_progress=False).run()
    assert summary["stopped_by"] is None
    assert not any("precision_warning" in m for m in RunDir(tmp_path / "run").metrics())


def test_a_run_with_a_learning_rate_below_fp32_resolution_is_stopped(write_recipe, tmp_path):
    """fp32 is not exempt: at lr 1e-12 every update of an O(1) weight rounds away."""
    monitors = '[[monitors]]\nname = "precision_guard"\naction = "stop"\n'
    recipe = miraslab.load_recipe(write_recipe("r.toml", MQAR_RECIPE + monitors), ["train.lr=1e-12"])
    with pytest.raises(RunStopped, match=r"precision: .* \(float32\) .* round away\) at step 1") as stopped:
        Trainer(recipe, tmp_path / "run", show_progress=False).run()
    assert stopped.value.exit_code == 11
