"""The memory-use metric is a monitor like the others: built for every run from the [train]
keys, reached through the registry, and reporting through the run's own ways to print and log
(test_memory_use_metric.py holds what it measures; this file, how it is wired)."""

from __future__ import annotations

import sys
from pathlib import Path

from training_cases import MQAR_RECIPE

import miraslab
from miraslab.params import make_component
from miraslab.registry import get_registry
from miraslab.train.monitors import build_monitors, standing_monitors
from miraslab.train.run_context import RunContext
from miraslab.train.run_dir import RunDir
from miraslab.train.spec import TrainSpec


def test_every_run_has_the_memory_use_monitor_configured_by_its_train_keys() -> None:
    train = TrainSpec(memory_use_min_share=0.02, memory_use_patience=5, memory_use_action="stop")
    (component,) = standing_monitors(train, get_registry())
    assert component.name == "memory_use"
    assert (component.params.min_share, component.params.patience, component.params.action) == (
        0.02,
        5,
        "stop",
    )
    assert standing_monitors(TrainSpec(memory_use=False), get_registry()) == []


def test_a_recipe_that_names_memory_use_gets_its_own_and_not_a_second() -> None:
    recipe = miraslab.Recipe(
        monitors=(make_component("monitor", "memory_use", {"patience": 7}, get_registry()),)
    )
    built = build_monitors(recipe)
    assert [name for name, _ in built] == ["memory_use"]
    assert built[0][1].params.patience == 7


def test_what_hooks_say_and_log_inside_held_back_follows_the_block(tmp_path: Path, capsys) -> None:
    run = RunContext(recipe=None, out_dir=tmp_path, model=None)
    with run.held_back():
        run.log({"event": "warning"})
        run.say("warning: later")
        print("the pass's own line", file=sys.stderr)
        assert run.records() == []
    assert run.records() == [{"event": "warning"}]
    assert capsys.readouterr().err.splitlines() == ["the pass's own line", "warning: later"]


LOW_GAIN = ["model.memory.chunk_size=32", "train.memory_use_min_share=0.01", "train.memory_use_patience=2"]


def test_the_floor_warning_follows_the_evaluation_it_judges(write_recipe, tmp_path: Path, capsys) -> None:
    """One chunk per sequence: no carry gain, below the 1 % floor at steps 2 and 4."""
    from miraslab.train.trainer import Trainer

    recipe = miraslab.load_recipe(write_recipe("r.toml", MQAR_RECIPE), LOW_GAIN)
    Trainer(recipe, tmp_path / "run", show_progress=True).run()
    lines = capsys.readouterr().err.splitlines()
    at_4 = next(i for i, line in enumerate(lines) if line.startswith("step 4: val_loss"))
    assert ", memory carry gain +0.0000 nats" in lines[at_4]
    assert lines[at_4 + 1].startswith("warning: memory_use/carry_gain_share 0.00% below")
    events = [record["event"] for record in RunDir(tmp_path / "run").metrics() if "event" in record]
    assert events == ["eval", "eval", "memory_use_warning"]
