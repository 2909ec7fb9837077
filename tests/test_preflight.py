"""miraslab preflight: each gate fails on the failure it guards and passes on a healthy recipe."""

from __future__ import annotations

import json
import math

import attrs
import torch
from conftest import REPO
from training_cases import MQAR_RECIPE

import miraslab
from miraslab.cli import main
from miraslab.model.block import Block, BlockContext
from miraslab.preflight import run_preflight

PROOF = REPO / "recipes" / "mqar" / "delta-proof.toml"
# delta-proof at seq 64 with 4 pairs: 60 steps at lr 1e-2 already recall far queries
BRIEF = [
    "train.lr=1e-2",
    "data.seq_len=64",
    "data.task.seq_len=64",
    "data.task.num_kv_pairs=4",
    "data.task.min_query_distance=20",
    "train.eval_batches=2",
]


class DisconnectedBlock(Block):
    """MAL with the memory's output dropped: it runs, writes, and reaches nothing."""

    uses_memory = True

    def __init__(self, params, context: BlockContext):
        super().__init__()
        self.memory_norm, self.memory = context.norm(), context.memory()
        self.attn_norm, self.attn = context.norm(), context.attention()

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False):
        memory_state, cache = state if state is not None else (None, None)
        _, memory_state = self.memory(self.memory_norm(x), memory_state, return_state=True)
        h, cache = self.attn(self.attn_norm(x), cache=cache, return_cache=True)
        x = x + h
        return (x, (memory_state, cache)) if return_state else x


class DisconnectedPlugin:
    @miraslab.hookimpl
    def register_layouts(self, register):
        register("disconnected", DisconnectedBlock, attrs.make_class("DisconnectedParams", {}, frozen=True))


def test_a_healthy_mqar_memory_passes_every_gate_after_a_brief_burst(capsys):
    code = main(
        ["preflight", str(PROOF), *[a for s in BRIEF for a in ("--set", s)], "--burst-steps", "60", "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"], report
    status = {gate["name"]: gate["status"] for gate in report["gates"]}
    assert status == {
        "proof_of_life": "pass",
        "baton_pass": "pass",
        "capacity": "pass",
        "memory_ablation": "pass",
        "seed_competition": "skip",
    }
    baton = next(g for g in report["gates"] if g["name"] == "baton_pass")["numbers"]
    assert baton["carried"] > 0 and baton["reset"] == 0
    ablation = next(g for g in report["gates"] if g["name"] == "memory_ablation")["numbers"]
    assert ablation["memory_use/carry_gain_share"] > 0.01


def test_a_disconnected_memory_fails_the_baton_pass_and_the_ablation(write_recipe, register_plugin, capsys):
    register_plugin(DisconnectedPlugin(), "disconnected-layout")
    recipe = write_recipe("r.toml", MQAR_RECIPE)
    code = main(["preflight", str(recipe), "--set", 'model.layout="disconnected"', "--burst-steps", "20",
                 "--gate", "baton_pass", "--gate", "memory_ablation"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAIL  baton_pass:" in out and "nothing crosses the boundary" in out
    assert "FAIL  memory_ablation: after 20 steps on the recipe's task: carry gain +0.0000 nats" in out
    assert out.strip().endswith("preflight failed: baton_pass, memory_ablation")


def test_the_tnt_atlas_seeds_gate_initialisation_is_reported_dead(write_recipe):
    recipe = write_recipe("r.toml", MQAR_RECIPE)
    dead = f'model.layout={{name = "mag", gain_init = {0.5 / math.sqrt(576)}}}'
    (life,) = run_preflight(recipe, [dead], gates=["proof_of_life"])
    assert (
        life.status == "fail" and "dead gates" in life.summary and "blocks.0.gate 100% linear" in life.summary
    )
    (alive,) = run_preflight(recipe, ['model.layout="mag"'], gates=["proof_of_life"])
    assert alive.status == "pass", alive.summary


def test_a_text_recipe_is_probed_on_mqar(tmp_path):
    """A task without answers cannot show the memory in minutes: the burst runs on MQAR."""
    from miraslab.preflight import mqar_probe_sets
    from miraslab.recipe.resolve import load_recipe

    text = load_recipe(REPO / "recipes" / "quickstart_text.toml")
    sets = mqar_probe_sets(text)
    probe = load_recipe(REPO / "recipes" / "quickstart_text.toml", sets)
    assert probe.data.task.name == "mqar" and probe.model.attention.window == 16
    # every query beyond what two layers of 16-token attention and the convolution reach
    assert probe.data.task.params.min_query_distance > 2 * (16 + probe.model.memory.conv_kernel)


QUICKSTART = REPO / "recipes" / "quickstart.toml"


def test_the_quickstarts_lr_gate_at_its_designed_init_is_not_dead():
    """lr_init = lr_max / 2 puts the lr gate at z = 0 by design: ~94 % of its pre-activations
    within +-0.1 after 5 steps, with gradient reaching it; that is not a dead gate."""
    (life,) = run_preflight(QUICKSTART, [], gates=["proof_of_life"])
    assert life.status == "pass", life.summary
    lr = life.numbers["gates"]["blocks.0.memory.memory.gates.lr"]
    assert lr["linear_share"] > 0.9 and lr["designed_preactivation"] == 0.0 and lr["grad_norm"] > 0


def test_a_gate_is_dead_by_what_stops_it_not_by_where_it_sits():
    from miraslab.preflight import why_dead

    alive = {"linear_share": 0.94, "saturated_share": 0.0, "mean_abs_preactivation": 0.066,
             "grad_norm": 0.03, "low_precision": False, "designed_preactivation": 0.0, "gain": None}  # fmt: skip
    assert why_dead(alive) is None
    assert "no gradient" in why_dead(alive | {"grad_norm": 0.0})
    assert "no gradient" in why_dead(alive | {"grad_norm": math.nan})
    assert "cannot move" in why_dead(alive | {"low_precision": True})
    # a decay gate designed at z = 3.9 that collapsed into the linear region
    assert "linear" in why_dead(alive | {"designed_preactivation": 3.9})
    assert "saturated" in why_dead(alive | {"linear_share": 0.0, "saturated_share": 0.95})
    # the TNT-Atlas seed's MAG gate: no bias, its gain 0.02 pins it at sigmoid's midpoint
    assert "its gain 0.0208" in why_dead(alive | {"designed_preactivation": None, "gain": 0.0208})


# Atlas's memory axes on the quickstart (the atlas-shift cells of
# recipes/ablations/paper-memories-mqar.toml), at batch 4 for speed
ATLAS = [
    "model.layout=lmm",
    'model.memory.memory={ name = "mlp", expansion = 4 }',
    'model.memory.bias={ name = "omega", window = 16, inner = "l2" }',
    'model.memory.retention={ name = "decay", init = 0.999 }',
    'model.memory.features={ name = "polynomial", degree = 2, mode = "elementwise" }',
    "model.memory.conv_init=shift_keys",
    "train.batch_size=4",
]


def test_an_outer_gradient_that_explodes_fails_proof_of_life_and_muons_own_step_passes():
    """Muon at theta <= 1 makes every chunk's step theta long whatever the error: the outer
    gradient is ~1e12 from step 1 while the loss sits at chance.  At Muon's own step
    (theta <= 0.1) it stays about 1."""
    overshoot = 'model.memory.algorithm={ name = "muon", lr_init = 0.5, lr_max = 1.0, momentum = 0.5 }'
    (life,) = run_preflight(QUICKSTART, [*ATLAS, overshoot], gates=["proof_of_life"])
    assert life.status == "fail" and "the outer gradient norm is" in life.summary, life.summary
    own = 'model.memory.algorithm={ name = "muon", momentum = 0.9 }'
    (life,) = run_preflight(QUICKSTART, [*ATLAS, own], gates=["proof_of_life"])
    assert life.status == "pass", life.summary


def test_a_gradient_norm_is_exploded_when_non_finite_or_above_the_threshold():
    from miraslab.preflight import EXPLODED_GRAD_NORM, exploded_gradient

    healthy = [{"step": 1, "grad_norm": 3.0}, {"step": 2, "loss": 5.0}, {"step": 2, "grad_norm": 0.5}]
    assert exploded_gradient(healthy) is None
    assert "is nan at step 3" in exploded_gradient([*healthy, {"step": 3, "grad_norm": math.nan}])
    assert "at step 2" in exploded_gradient([healthy[0], {"step": 2, "grad_norm": EXPLODED_GRAD_NORM * 2}])
