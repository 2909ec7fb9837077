"""``miraslab probe --capacity`` and preflight's capacity gate: does a memory store pairs at all?"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO

from miraslab.cli import main
from miraslab.memory.knockout import memory_ablation
from miraslab.memory_capacity import at_count, delta_rule_read, probe_capacity, read_back
from miraslab.preflight import run_preflight

QUICKSTART = REPO / "recipes" / "quickstart.toml"
# the quickstart's model with a deep memory whose lr gate is shut (theta = 1e-6): it writes nothing
SHUT = ['model.memory.memory="mlp"', 'model.memory.algorithm={name = "gd", lr_init = 1e-6, lr_max = 1.0}']


def capacity_json(capsys, tmp_path, *sets: str) -> dict:
    args = ["probe", "--recipe", str(QUICKSTART), "--capacity", "--pairs", "8", "--rows", "2"]
    args += [a for s in sets for a in ("--set", s)] + ["--plot", str(tmp_path / "capacity.png"), "--json"]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)["capacity"]


def test_the_probe_tells_a_storing_memory_from_one_whose_lr_gate_is_shut_before_training(capsys, tmp_path):
    (stores,) = capacity_json(capsys, tmp_path)["layers"]
    (shut,) = capacity_json(capsys, tmp_path, *SHUT)["layers"]
    # the quickstart's delta rule (theta 0.5 at init) reads 4 random pairs back at cosine ~0.95,
    # as a step-1 delta rule does (~0.96); a shut lr gate reads what the initial MLP reads, ~0
    four, none = at_count(stores, "random", 4), at_count(shut, "random", 4)
    assert four["cosine"] > 0.9 and four["error"] < 0.5 and four["reference_cosine"] > 0.9
    assert abs(none["cosine"]) < 0.2 and none["error"] > 1.0
    assert none["cosine"] == pytest.approx(none["initial_cosine"], abs=0.01)  # writing changed nothing
    for layer in (stores, shut):  # the task pairs come from the layer's own k/v of MQAR validation data
        assert [row["n"] for row in layer["task"]] == [1, 2, 4, 8] == [row["n"] for row in layer["random"]]
    assert at_count(stores, "task", 4)["cosine"] > 0.8 and abs(at_count(shut, "task", 4)["cosine"]) < 0.2


def test_the_probe_writes_its_curve_as_png_and_its_numbers_as_json(capsys, tmp_path):
    result = capacity_json(capsys, tmp_path)
    assert result["plot"] == str(tmp_path / "capacity.png")
    assert (tmp_path / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (layer,) = result["layers"]
    assert (layer["layer"], layer["heads"], layer["d_key"], layer["chunk_size"]) == (
        "blocks.0.memory.memory",
        2,
        32,
        2,
    )
    assert layer["state_size"] == layer["reference_state_size"] == 32 * 32
    keys = {"n", "cosine", "error", "initial_cosine", "initial_error", "reference_cosine", "reference_error"}
    assert keys == set(layer["random"][0])


def test_the_text_table_names_each_memory_and_the_delta_rule(capsys, tmp_path):
    plot = tmp_path / "c.png"
    assert (
        main(["probe", "--recipe", str(QUICKSTART), "--capacity", "--pairs", "2", "--plot", str(plot)]) == 0
    )
    out = capsys.readouterr().out
    assert "quickstart, untrained on mqar validation data" in out and "blocks.0.memory.memory" in out
    assert "delta cos" in out and f"plot: {plot}" in out


def test_a_zeroed_read_stores_nothing():
    import miraslab
    from miraslab.model.language_model import build_model

    recipe = miraslab.load_recipe(QUICKSTART)
    torch.manual_seed(0)
    model = build_model(recipe.model)
    tokens = torch.randint(0, 256, (2, 64))
    with memory_ablation(model, "zero"):
        (layer,) = probe_capacity(model, tokens, most=4, kinds=("random",))["layers"]
    row = at_count(layer, "random", 4)
    assert row["cosine"] == 0.0 and row["error"] == pytest.approx(1.0, abs=1e-6)  # a zero read, exactly


def test_the_delta_rule_reference_stores_orthogonal_keys_exactly():
    keys = torch.linalg.qr(torch.randn(16, 16))[0][:8].reshape(1, 1, 8, 16)  # 8 orthonormal keys
    values = torch.randn(1, 1, 8, 5)
    assert read_back(delta_rule_read(keys, values), values)["error"] < 1e-10  # exact up to float32 rounding


def test_the_capacity_gate_passes_a_delta_rule_and_fails_a_memory_that_cannot_store():
    (stores,) = run_preflight(QUICKSTART, [], gates=["capacity"])
    assert stores.status == "pass" and stores.numbers["layers"]["blocks.0.memory.memory"]["cosine"] > 0.9
    (shut,) = run_preflight(QUICKSTART, SHUT, gates=["capacity"])
    assert shut.status == "fail", shut.summary
    assert "blocks.0.memory.memory cannot store 4 random pairs at the initial gates" in shut.summary


def test_probe_needs_a_run_or_a_recipe_and_runs_only_capacity_on_a_recipe(capsys):
    assert main(["probe", "--capacity"]) == 2
    assert "give a RUN directory or --recipe RECIPE" in capsys.readouterr().err
    assert main(["probe", "--recipe", str(QUICKSTART), "--memory-ablation"]) == 2
    err = capsys.readouterr().err
    assert "only --capacity runs on an untrained model" in err and err.count("\n") == 1


def test_a_tnt_model_is_probed_memory_by_memory(capsys, tmp_path):
    """TNT's global memory (chunk 16) and its local memory (chunk 2, Q-K projection) each
    write with their own chunking: both store 4 random pairs at cosine > 0.8 (measured 0.95, 0.87)."""
    tnt = 'model.tnt={global_chunk=16, local_chunks=[2], shard_length=64, local_qk_projection=true, mixer="sum"}'
    layers = capacity_json(capsys, tmp_path, 'model.layout="mag"', tnt)["layers"]
    chunks = {layer["layer"]: layer["chunk_size"] for layer in layers}
    assert chunks == {"blocks.0.memory.global_memory": 16, "blocks.0.memory.local_memories.0": 2}
    assert all(at_count(layer, "random", 4)["cosine"] > 0.8 for layer in layers)


@pytest.mark.parametrize("flag", ["--pairs", "--trials", "--rows"])
def test_a_count_below_one_is_one_line_before_any_model_is_built(capsys, flag):
    assert main(["probe", "--recipe", str(QUICKSTART), "--capacity", flag, "0"]) == 2
    err = capsys.readouterr().err
    assert f"{flag}: expected an integer >= 1, got 0" in err and err.count("\n") == 1
