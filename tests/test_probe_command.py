"""``miraslab probe RUN --memory-ablation | --niah``: memory ablations and needle retrieval on a trained run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO
from training_cases import MQAR_RECIPE, SHORT_PROOF, write_corpus, write_recipe

import miraslab
from miraslab.cli import main
from miraslab.memory.knockout import memory_ablation, modes_of
from miraslab.train.trainer import Trainer


@pytest.fixture(scope="module")
def proof_run(tmp_path_factory):
    """30 steps of the delta-rule proof (about 3 s): the memory carries most of a nat."""
    recipe = miraslab.load_recipe(REPO / "recipes" / "mqar" / "delta-proof.toml", SHORT_PROOF)
    out = tmp_path_factory.mktemp("probe") / "run"
    Trainer(recipe, out, show_progress=False).run()
    return out


def probe_json(capsys, *args: str) -> dict:
    assert main(["probe", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_memory_ablation_reports_each_mode_on_the_same_batches_as_eval(proof_run, capsys):
    probe = probe_json(capsys, str(proof_run), "--memory-ablation", "--batches", "2")["memory_ablation"]
    modes = probe["modes"]
    assert list(modes) == ["carried", "reset", "zero"]  # no TNT shards in this model
    assert probe["answers"] == 2 * 32 * 4  # batches x rows x pairs
    assert all({"loss", "loss_change", "accuracy"} <= m.keys() for m in modes.values())
    assert probe["carry_gain"] == pytest.approx(modes["reset"]["loss"] - modes["carried"]["loss"])
    assert probe["carry_gain"] > 0.3 and probe["read_gain"] == pytest.approx(modes["zero"]["loss_change"])
    assert probe["carry_gain_share"] == pytest.approx(probe["carry_gain"] / modes["carried"]["loss"])
    assert main(["eval", str(proof_run), "--memory", "all", "--batches", "2", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["by_memory"]
    for mode in ("carried", "reset", "zero"):
        assert modes[mode]["loss"] == pytest.approx(evaluated[mode]["loss"])
        assert modes[mode]["accuracy"] == pytest.approx(evaluated[mode]["accuracy"])


def test_memory_ablation_text_output_names_the_modes(proof_run, capsys):
    assert main(["probe", str(proof_run), "--memory-ablation", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    for line in ("carried", "reset every chunk", "read zeroed", "carry gain +"):
        assert line in out


def test_niah_accuracy_by_depth_and_distance_under_every_memory_mode(proof_run, capsys):
    args = (str(proof_run), "--niah", "--memory-ablation", "--batches", "1", "--depths", "0,0.5,1")
    niah = probe_json(capsys, *args)["niah"]
    assert (niah["needle"], niah["haystack"], niah["seq_len"]) == ("passkey", "noise", 64)
    assert [d["depth"] for d in niah["by_depth"]] == [0.0, 0.5, 1.0]
    distances = [d["distance"] for d in niah["by_depth"]]
    assert distances == sorted(distances, reverse=True)  # a deeper needle is nearer its query
    assert distances[-1] == 1 + 4  # depth 1: the needle's last symbol right before the query
    answers = sum(d["answers"] for d in niah["by_depth"])
    assert answers == 3 * 32 * 5 and sum(b["answers"] for b in niah["by_distance"]) == answers
    assert set(niah["accuracy"]) == {"carried", "reset", "zero"}
    for bucket in niah["by_distance"]:
        assert set(bucket["accuracy"]) == {"carried", "reset", "zero"}


def test_niah_on_a_text_run_hides_the_needle_in_its_own_text(tmp_path, capsys):
    recipe = write_recipe(tmp_path, write_corpus(tmp_path))
    sets = ["train.steps=2", "train.eval_every=0", "train.checkpoint_every=0", "model.n_layers=1"]
    Trainer(miraslab.load_recipe(recipe, sets), tmp_path / "run", show_progress=False).run()
    niah = probe_json(capsys, str(tmp_path / "run"), "--niah", "--seq-len", "96", "--batches", "1")["niah"]
    assert niah["haystack"] == "text" and niah["seq_len"] == 96
    assert all(d["answers"] == 4 * 5 for d in niah["by_depth"])  # 4 rows, a 5-digit passkey


def tnt_model(directory, shard_length: int):
    path = directory / f"tnt-{shard_length}.toml"
    path.write_text(
        MQAR_RECIPE + f"[model.tnt]\nglobal_chunk = 8\nlocal_chunks = [4]\nshard_length = {shard_length}\n"
    )
    torch.manual_seed(0)
    return miraslab.build_model(miraslab.load_recipe(path)).eval()


@torch.no_grad()
def test_reset_every_shard_starts_the_global_memory_afresh_at_each_shard_only(tmp_path):
    model = tnt_model(tmp_path, shard_length=16)
    assert modes_of(model) == ("carried", "reset_shard", "reset", "zero")
    x = torch.randint(0, 64, (2, 32))
    carried = model(x)
    with memory_ablation(model, "reset_shard"):
        shard = model(x)
    # the first shard is as carried; after it the local memories restart anyway, so what
    # differs is the global memory's carry
    torch.testing.assert_close(shard[:, :16], carried[:, :16], rtol=0, atol=0)
    assert (shard[:, 16:] - carried[:, 16:]).abs().max() > 1e-4
    whole = tnt_model(tmp_path, shard_length=32)  # one shard covers the sequence: nothing to reset
    carried = whole(x)
    with memory_ablation(whole, "reset_shard"):
        torch.testing.assert_close(whole(x), carried, rtol=0, atol=0)


def test_without_a_tnt_hierarchy_reset_every_shard_is_an_error(tmp_path):
    from miraslab.errors import MiraslabError

    hierarchy = next(m for m in tnt_model(tmp_path, 16).modules() if hasattr(m, "global_memory"))
    model = torch.nn.Sequential(hierarchy.global_memory)  # a memory, but no shards
    with pytest.raises(MiraslabError, match="no TNT hierarchy"), memory_ablation(model, "reset_shard"):
        pass


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "choose what to measure, --memory-ablation, --niah and/or --capacity"),
        (("--niah", "--depths", "0,2"), "--depths: expected numbers in [0, 1]"),
    ],
)
def test_a_bad_request_is_one_line(proof_run, capsys, args, message):
    assert main(["probe", str(proof_run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_capacity_on_a_trained_run_writes_its_plot_into_the_run(proof_run, capsys):
    capacity = probe_json(capsys, str(proof_run), "--capacity", "--pairs", "4", "--trials", "2")["capacity"]
    assert capacity["plot"] == str(proof_run / "capacity.png") and (proof_run / "capacity.png").is_file()
    (layer,) = capacity["layers"]
    assert [row["n"] for row in layer["random"]] == [1, 2, 4]
    assert capacity["task"] == "mqar" and capacity["title"].endswith("at step 30")
