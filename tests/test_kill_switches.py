"""Kill switches and the gate floor penalty: each stops (or steers) a run whose memory dies."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from training_cases import MQAR_RECIPE

import miraslab
from miraslab.cli import main
from miraslab.errors import STOP_EXIT_CODES, RunStopped
from miraslab.model.memory_gate import MemoryGate
from miraslab.plugins.monitor.kill_switch import KillSwitch, KillSwitchParams
from miraslab.train.checkpoint import load_checkpoint
from miraslab.train.run_dir import RunDir
from miraslab.train.trainer import RunContext, Trainer

MAG = ['model.layout="mag"', "train.steps=30", "train.eval_every=0", "train.checkpoint_every=5"]
# the TNT-Atlas seed's gate initialisation: gain 0.5 / sqrt(576) leaves |z| ~ 0.02, linear
DEAD_GAIN = 0.5 / math.sqrt(576)
FAST = [*MAG, "train.lr=3e-2"]  # the collapse takes about 9 steps from 0.47 to below 0.2


class CollapseGates:
    """A test monitor that drives every MAG gate toward 0 (weight * mean gate in the loss)."""

    def __init__(self, params):
        self.gates: list[MemoryGate] = []

    @miraslab.hookimpl
    def on_train_start(self, run):
        self.gates = [m for m in run.model.modules() if isinstance(m, MemoryGate)]
        for gate in self.gates:
            gate.keep_graph = True

    @miraslab.hookimpl
    def loss_terms(self, run, outputs):
        live = [g.last_gate for g in self.gates if g.last_gate is not None and g.last_gate.requires_grad]
        return {"collapse": 200.0 * torch.stack([g.mean() for g in live]).sum()} if live else None


class CollapsePlugin:
    @miraslab.hookimpl
    def register_monitors(self, register):
        import attrs

        register("collapse_gates", CollapseGates, attrs.make_class("CollapseParams", {}, frozen=True))


def train(write_recipe, out: Path, monitors: str, sets: list[str]) -> dict:
    recipe = miraslab.load_recipe(write_recipe("r.toml", MQAR_RECIPE + monitors), sets)
    return Trainer(recipe, out, show_progress=False).run()


SWITCH = """
[[monitors]]
name = "kill_switch"
gate_floor = 0.2
patience = 4
"""


def test_a_gate_driven_to_collapse_trips_the_switch_within_its_patience(
    write_recipe, tmp_path, register_plugin
):
    register_plugin(CollapsePlugin(), "collapse-plugin")
    with pytest.raises(RunStopped) as stopped:
        train(write_recipe, tmp_path / "run", SWITCH + '[[monitors]]\nname = "collapse_gates"\n', FAST)
    assert (
        stopped.value.cause == "gate_collapse" and stopped.value.exit_code == STOP_EXIT_CODES["gate_collapse"]
    )
    message = str(stopped.value)
    assert "kill switch gate_floor: L0 gate: gate_mean" in message and "below the floor 0.2" in message
    first = int(message.split("since step ")[1].split(";")[0])
    stop = int(message.split("run stopped at step ")[1].split(":")[0])
    assert stop - first == 4 and stop < 30  # exactly the patience after it first held
    # the kept checkpoint is one written before the stop, and it names it
    kept = load_checkpoint(tmp_path / "run")
    assert kept.step < stop and f"step-{kept.step:08d}" in message
    gates = [
        m["memory/L0/gate_mean"] for m in RunDir(tmp_path / "run").metrics() if "memory/L0/gate_mean" in m
    ]
    assert not gates  # memory_stats is not on: the switch measured the gates itself


def test_the_same_switch_lets_a_healthy_gate_train_on(write_recipe, tmp_path):
    summary = train(write_recipe, tmp_path / "run", SWITCH, FAST)
    assert summary["step"] == 30 and summary["stopped_by"] is None


DEAD = """
[[monitors]]
name = "kill_switch"
dead_share = 0.9
patience = 3
"""


def test_the_seeds_dead_gate_initialisation_is_stopped_with_its_exit_code(write_recipe, tmp_path, capsys):
    recipe = write_recipe("r.toml", MQAR_RECIPE + DEAD)
    dead = [f'model.layout={{name = "mag", gain_init = {DEAD_GAIN}}}', *MAG[1:]]
    code = main(["train", str(recipe), "--out", str(tmp_path / "dead"), "--quiet",
                 *[a for s in dead for a in ("--set", s)]])  # fmt: skip
    err = capsys.readouterr().err
    assert code == STOP_EXIT_CODES["dead_gates"] == 7, err
    assert "kill switch dead_share: L0 gate:" in err and "within ±0.1 (linear)" in err
    assert err.count("\n") == 1  # one line
    # the default gain (1.0) puts the gate's pre-activations outside the linear region
    code = main(["train", str(recipe), "--out", str(tmp_path / "alive"), "--quiet",
                 *[a for s in MAG for a in ("--set", s)]])  # fmt: skip
    assert code == 0, capsys.readouterr().err


def test_a_loss_spike_over_its_moving_average_stops_the_run(tmp_path):
    switch = KillSwitch(KillSwitchParams(loss_spike=3.0, spike_window=5))
    run = RunContext(recipe=None, out_dir=tmp_path, model=torch.nn.Linear(2, 2))
    for step, loss in enumerate([2.0, 2.1, 1.9, 2.0, 2.0, 2.9, 2.2], start=1):  # 2.9 is < 3x
        run.step = step
        switch.on_step_end(run, {"loss": loss})
    assert run.stop_reason is None
    run.step = 8
    switch.on_step_end(run, {"loss": 7.5})
    assert run.stop_cause == "loss_spike" and "loss 7.5 is 3.4x its moving average 2.184" in run.stop_reason


def test_tnt_mixer_alpha_at_an_extreme_is_stopped(tmp_path):
    model = miraslab.build_model(
        Path(__file__).parents[1] / "recipes" / "papers" / "tnt.toml",
        [
            "model.d_model=32",
            "model.n_layers=1",
            "model.n_heads=2",
            "model.vocab_size=64",
            'model.tnt.mixer="m3"',
        ],
    )
    mixers = [m for name, m in model.named_modules() if name.endswith("mixer") and hasattr(m, "alpha")]
    assert mixers
    switch = KillSwitch(KillSwitchParams(mixer_low=0.02, mixer_high=0.98, patience=2))
    run = RunContext(recipe=None, out_dir=tmp_path, model=model)
    for step in (1, 2, 3):
        run.step = step
        switch.on_step_end(run, {})
    assert run.stop_reason is None  # alpha 0.5 at init
    with torch.no_grad():
        mixers[0].logit.fill_(8.0)  # alpha 0.9997: the local memories ignored
    for step in (4, 5, 6):
        run.step = step
        switch.on_step_end(run, {})
    assert (
        run.stop_cause == "mixer_extreme"
        and "mixer_alpha 0.9997 outside (0.02, 0.98) since step 4" in run.stop_reason
    )


def test_the_gate_floor_penalty_pushes_a_collapsing_gate_back(write_recipe, tmp_path, register_plugin):
    register_plugin(CollapsePlugin(), "collapse-plugin")
    collapse = '[[monitors]]\nname = "collapse_gates"\n[[monitors]]\nname = "memory_stats"\n'
    floor = '[[monitors]]\nname = "gate_floor"\nfloor = 0.3\nweight = 2000.0\n'
    sets = [*FAST, "train.steps=20"]
    train(write_recipe, tmp_path / "bare", collapse, sets)
    train(write_recipe, tmp_path / "floored", collapse + floor, sets)

    def last(run: str, key: str) -> float:
        return [m[key] for m in RunDir(tmp_path / run).metrics() if key in m][-1]

    assert last("bare", "memory/L0/gate_mean") < 0.15
    assert last("floored", "memory/L0/gate_mean") > 0.2
    assert last("floored", "gate_floor") >= 0.0


def test_the_memory_share_floor_makes_the_memory_write_more_into_its_block(write_recipe, tmp_path):
    stats = '[[monitors]]\nname = "memory_stats"\n'
    floor = '[[monitors]]\nname = "memory_share_floor"\nfloor = 5.0\nweight = 10.0\n'
    sets = ["train.steps=15", "train.eval_every=0", "train.lr=1e-2"]
    train(write_recipe, tmp_path / "bare", stats, sets)
    train(write_recipe, tmp_path / "floored", stats + floor, sets)

    def last(run: str, key: str) -> float:
        return [m[key] for m in RunDir(tmp_path / run).metrics() if key in m][-1]

    assert last("floored", "memory/L0/memory_share") > 1.5 * last("bare", "memory/L0/memory_share")
    penalties = [
        m["memory_share_floor"] for m in RunDir(tmp_path / "floored").metrics() if "memory_share_floor" in m
    ]
    assert penalties[0] > 0  # it started below the floor, and the penalty pushed it up
