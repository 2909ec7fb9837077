"""The README's first command: the quickstart proves its memory is used (slow tier: ~1-2 min)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

import miraslab


@pytest.mark.slow
def test_the_quickstart_recalls_what_only_its_carried_memory_holds(tmp_path):
    out = tmp_path / "quickstart"
    command = [
        sys.executable,
        "-m",
        "miraslab",
        "train",
        str(REPO / "recipes" / "quickstart.toml"),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]
    use = json.loads((out / "summary.json").read_text())["memory_use"]
    # the README's targets are 99 % and a 90-point drop; a test on any CPU allows some slack
    assert use["val_accuracy"] >= 0.95 and use["memory_use/reset_accuracy"] <= 0.05, use
    assert "the memory is used at step 1000" in result.stdout + result.stderr
    assert (out / "memory_use.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_paper_recipes_go_on_the_quickstarts_task_by_set_alone(tmp_path, capsys):
    """benchmarks/quickstart_models.py, two steps each: every paper and baseline recipe loads on
    the quickstart's task, and the table has a row per model with its memory columns."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quickstart_models

    assert "tnt" not in quickstart_models.MODELS and {"titans-mag", "swa", "atlas"} <= set(
        quickstart_models.MODELS
    )
    out = tmp_path / "out.json"
    assert quickstart_models.main(["--models", "swa", "deltanet", "--steps", "2", "--json", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["swa"]["reset_accuracy"] is None and rows["swa"]["accuracy"] is not None
    assert rows["deltanet"]["layout"] == "lmm" and rows["deltanet"]["reset_accuracy"] is not None
    table = capsys.readouterr().out
    assert "| swa | 0 | swa |" in table and "| deltanet | 0 | lmm |" in table


def test_the_storing_inits_change_deep_memories_only_and_every_seed_gets_a_verdict(tmp_path, capsys):
    """--storing-inits lays the inits that store over each deep paper memory (every recipe still
    loads), leaves linear memories alone; --seeds adds a row per seed and a verdict per model."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quickstart_models
    from _paper_models import model_sets, storing_inits

    for name, path in quickstart_models.MODELS.items():
        recipe = miraslab.load_recipe(
            REPO / "recipes" / "quickstart.toml", [*model_sets(path, segment=16), *storing_inits(path)]
        )
        memory = recipe.model.memory
        if recipe.model.layout.name == "mac":  # MAC's attention reaches as far as the others'
            assert recipe.model.layout.params.segment == 16
        if name in {"deltanet", "gated-deltanet", "swa", "transformer"}:
            assert storing_inits(path) == [], name
            continue
        assert memory.conv_init == "shift_keys", name
        if memory.algorithm.name == "muon":  # Muon's own step: at theta <= 1 the outer gradient explodes
            assert memory.algorithm.params.lr_max == 0.1, name
        else:
            assert memory.algorithm.params.lr_max >= 1.0, name
        if hasattr(memory.retention.params, "init"):
            assert memory.retention.params.init == 0.999, name
        if memory.retention.name == "kl":  # centred: a positive simplex stores no signed value
            assert memory.retention.params.center and memory.retention.params.scale == 128.0, name
        if memory.bias.name == "huber":
            assert memory.bias.params.delta == 4.0, name
    out = tmp_path / "out.json"
    args = ["--models", "titans-lmm", "deltanet", "--steps", "1", "--seeds", "2", "--storing-inits"]
    assert quickstart_models.main([*args, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("titans-lmm", 0),
        ("titans-lmm", 1),
        ("deltanet", 0),
        ("deltanet", 1),
    ]
    table = capsys.readouterr().out
    assert "| titans-lmm | 2 |" in table and "seeds 0-1, deep memories at the storing inits" in table


def test_capacity_tells_a_storing_memory_from_one_that_cannot_store(tmp_path, capsys):
    """--capacity trains nothing and reads back pairs written into each untrained memory: the
    delta rule stores one random pair (cosine ~1); Memora stores it at the storing inits (its
    simplex centred, c = 128) and stores none on Memora's own simplex (positive weights: a
    signed value is out of reach), which a --set that lands last restores."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quickstart_models

    out = tmp_path / "capacity.json"
    args = ["--capacity", "--storing-inits", "--models", "deltanet", "memora", "swa"]
    assert quickstart_models.main([*args, "--json", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.read_text())["capacity"]}
    assert rows["deltanet"]["random_1"] > 0.95 and rows["deltanet"]["random_1_delta_rule"] > 0.95
    assert rows["memora"]["random_1"] > 0.9
    assert rows["swa"]["random_1"] is None  # no memory: a dash in the table
    assert "| swa | 0 | – |" in capsys.readouterr().out
    simplex = ["--set", "model.memory.retention.center=false", "--set", "model.memory.retention.scale=1.0"]
    assert quickstart_models.main([*args[:3], "memora", *simplex, "--json", str(out)]) == 0
    assert (
        "with model.memory.retention.center=false model.memory.retention.scale=1.0" in capsys.readouterr().out
    )
    (memora,) = json.loads(out.read_text())["capacity"]
    assert memora["random_1"] < 0.5 and memora["random_16"] < 0.5
    parsed = argparse.Namespace(storing_inits=True, sets=["model.memory.conv_init=default"], chunk=0)
    sets = quickstart_models._sets("titans-lmm", parsed, 1, 0)
    assert sets[-1] == "model.memory.conv_init=default" and "model.memory.conv_init=shift_keys" in sets
    recipe = miraslab.load_recipe(REPO / "recipes" / "quickstart.toml", sets)
    assert recipe.model.memory.conv_init == "default"


def test_the_titans_pytorch_peer_trains_the_same_model_and_reads_with_its_memory_reset(tmp_path, capsys):
    """--peer titans-pytorch: titans-pytorch's NeuralMemory (depth 2 and 1) as the lmm block's
    memory, trained by the same Trainer on the same task; its reset-every-chunk read is each
    chunk run alone from the initial weights."""
    pytest.importorskip("titans_pytorch")
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import quickstart_models
    from _peer_memory import PeerMemory, reset_every_chunk

    memory = PeerMemory(dim=64, heads=2, head_dim=32, chunk_size=2, depth=1)
    x = torch.randn(2, 6, 64)
    with reset_every_chunk(memory):
        y = memory(x)
    torch.testing.assert_close(y[:, 2:4], memory(x[:, 2:4]))
    out = tmp_path / "peer.json"
    assert (
        quickstart_models.main(["--models", "--peer", "titans-pytorch", "--steps", "2", "--json", str(out)])
        == 0
    )
    rows = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"titans-pytorch deep", "titans-pytorch linear"}
    for row in rows.values():
        assert row["layout"] == "titans-pytorch-lmm"
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["reset_accuracy"] <= 1.0, row
    table = capsys.readouterr().out
    assert "| titans-pytorch deep | 0 | titans-pytorch-lmm | 2 |" in table
    assert "| titans-pytorch linear | 0 | titans-pytorch-lmm | 2 |" in table


def test_a_diverged_seed_is_a_row_that_fails_the_bar():
    """A seed whose run diverges (the trainer stops it) prints as 'diverged' and fails its
    model's verdict, even when the other seeds pass; the table is not lost."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quickstart_models

    row = {"model": "yaad", "layout": "lmm", "steps": 300, "train_seconds": 1.0, "carry_gain": 7.0}
    rows = [
        {**row, "seed": 0, "accuracy": 1.0, "reset_accuracy": 0.01},
        {**row, "seed": 1, "accuracy": None, "reset_accuracy": None, "carry_gain": None, "diverged": "inf"},
    ]
    assert "| yaad | 1 | lmm | 300 | diverged |" in quickstart_models.markdown(rows)
    assert "| no: a seed diverged |" in quickstart_models.verdicts(rows)
    assert "| yes |" in quickstart_models.verdicts(rows[:1])
