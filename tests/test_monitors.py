"""Monitors from the recipe hook into the trainer: they add metrics and loss terms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from training_cases import write_corpus, write_recipe

from miraslab.model.language_model import build_model
from miraslab.recipe.resolve import load_recipe
from miraslab.train.run_dir import RunDir
from miraslab.train.trainer import Trainer

MONITORS = """
[[monitors]]
name = "memory_stats"
[[monitors]]
name = "gate_polarization"
weight = 0.5
warmup_steps = 0
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("monitors")
    os.environ["MIRASLAB_CACHE"] = str(directory / "cache")
    write_corpus(directory)
    recipe = load_recipe(write_recipe(directory, directory / "corpus.txt", MONITORS))
    Trainer(recipe, directory / "run", show_progress=False, max_steps=3).run()
    return directory / "run"


def test_memory_stats_adds_gate_and_memory_statistics_per_layer(run):
    step = [m for m in RunDir(run).metrics() if "loss" in m][-1]
    for layer in ("L0", "L1"):
        for key in ("gate_mean", "gate_std", "gate_min", "gate_saturated", "gate_linear", "gain"):
            assert f"memory/{layer}/{key}" in step
        assert 0 < step[f"memory/{layer}/gate_mean"] < 1
        assert step[f"memory/{layer}/memory/M_norm"] > 0 and step[f"memory/{layer}/memory/S_norm"] > 0
        assert 0.9 < step[f"memory/{layer}/memory/decay_mean"] < 1


def test_gate_polarization_adds_its_loss_term(run):
    steps = [m for m in RunDir(run).metrics() if "loss" in m]
    assert all(0 < m["gate_polarization"] <= 0.5 for m in steps)


def test_the_polarization_term_reaches_the_gates(tmp_path):
    from miraslab.plugins.monitor.gate_polarization import GatePolarization, GatePolarizationParams
    from miraslab.train.trainer import RunContext

    torch.manual_seed(0)
    model = build_model(load_recipe(write_recipe(tmp_path, tmp_path / "unused.txt")).model)
    monitor = GatePolarization(GatePolarizationParams(weight=1.0, warmup_steps=0))
    context = RunContext(recipe=None, out_dir=Path("."), model=model)
    monitor.on_train_start(context)
    model(torch.randint(0, 320, (2, 16)))
    (term,) = monitor.loss_terms(context, {}).values()
    term.backward()
    gate = model.blocks[0].gate
    assert gate.log_gain.grad is not None and gate.log_gain.grad.abs() > 0


def test_how_far_the_memory_moved_within_a_sequence_is_measured_from_its_w_init():
    """M_moved = ||W_end - W_init|| / ||W_init|| per (batch, head), averaged; the layer runs in
    float64, the statistics are taken in float32 (a monitor's precision): 1e-6 relative."""
    import miraslab

    torch.manual_seed(0)
    layer = miraslab.MemoryLayer.from_options(32, heads=2, memory="mlp", algorithm="momentum").double()
    layer.memory.record = True
    _, state = layer(torch.randn(2, 40, 32, dtype=torch.float64), return_state=True)
    end = {n: w.detach() for n, w in state.memory.memory.weights.items()}
    init = {n: w.detach() for n, w in layer.memory.rule.arch.init.items()}

    def per_head(weights):
        return sum(w.pow(2).sum(dim=(-1, -2)) for w in weights.values()).sqrt()

    change = per_head({n: end[n] - init[n].expand_as(end[n]) for n in init})
    stats = layer.memory.last_norms
    assert stats["M_change"] == pytest.approx(float(change.mean()), rel=1e-6)
    assert stats["M_moved"] == pytest.approx(float((change / per_head(init)).mean()), rel=1e-6)
    assert stats["M_max"] == pytest.approx(max(float(w.abs().max()) for w in end.values()), rel=1e-6)
    assert stats["S_norm"] > 0 and stats["S_std"] > 0


def test_memory_stats_reports_the_memory_branchs_share_of_each_block(run):
    step = [m for m in RunDir(run).metrics() if "loss" in m][-1]
    for layer in ("L0", "L1"):
        assert step[f"memory/{layer}/memory_share"] > 0
        assert 0 <= step[f"memory/{layer}/gate_saturating"] <= 1
        assert 0 < step[f"memory/{layer}/memory/M_moved"] < 10
