"""The memory-use metric logged at every evaluation: what the memory's carried state is worth."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from conftest import REPO
from training_cases import MQAR_RECIPE

import miraslab
from miraslab.components import build_component
from miraslab.data.batch import IGNORE
from miraslab.memory.knockout import memory_ablation
from miraslab.train.run_dir import RunDir, load_run
from miraslab.train.trainer import Trainer

KEYS = {"memory_use/carry_gain", "memory_use/carry_gain_share", "memory_use/read_gain"}


def evals(write_recipe, out, sets=(), recipe=MQAR_RECIPE) -> list[dict]:
    loaded = miraslab.load_recipe(write_recipe("r.toml", recipe), list(sets))
    Trainer(loaded, out, show_progress=False).run()
    return [m for m in RunDir(out).metrics() if m.get("event") == "eval"]


def test_the_gains_are_the_losses_with_the_memory_reset_and_zeroed_minus_carried(write_recipe, tmp_path):
    last = evals(write_recipe, tmp_path / "run")[-1]
    assert last.keys() >= KEYS
    run = load_run(tmp_path / "run")
    val = build_component(run.recipe.data.task).batches("val", seq_len=32, batch_size=4, seed=run.recipe.seed)
    batches = [next(val) for _ in range(2)]

    def loss(mode: str) -> float:
        with memory_ablation(run.model, mode):
            return sum(
                F.cross_entropy(
                    run.model(b["inputs"]).reshape(-1, 64), b["labels"].reshape(-1), ignore_index=IGNORE
                ).item()
                for b in batches
            ) / len(batches)

    carried = loss("carried")
    assert last["memory_use/carry_gain"] == pytest.approx(loss("reset") - carried, abs=1e-5)
    assert last["memory_use/read_gain"] == pytest.approx(loss("zero") - carried, abs=1e-5)
    assert last["memory_use/carry_gain_share"] == pytest.approx(
        last["memory_use/carry_gain"] / carried, rel=1e-4
    )


def test_a_memory_with_nothing_to_carry_shows_no_gain_and_it_can_be_turned_off(write_recipe, tmp_path):
    # one chunk covers the whole sequence: resetting at chunk starts changes nothing
    one_chunk = evals(write_recipe, tmp_path / "one", ["model.memory.chunk_size=32"])[-1]
    assert one_chunk["memory_use/carry_gain"] == pytest.approx(0.0, abs=1e-6)
    assert one_chunk["memory_use/read_gain"] != pytest.approx(0.0, abs=1e-4)  # the read itself matters
    off = evals(write_recipe, tmp_path / "off", ["train.memory_use=false"])[-1]
    assert not KEYS & off.keys()
    no_memory = evals(write_recipe, tmp_path / "swa", ['model.layout="swa"'])[-1]
    assert not KEYS & no_memory.keys()


def test_on_recall_only_a_memory_can_do_the_carry_gain_is_large_within_a_hundred_steps(tmp_path):
    """recipes/mqar/delta-proof.toml, 100 steps (about 8 s): well over a nat already."""
    recipe = miraslab.load_recipe(REPO / "recipes" / "mqar" / "delta-proof.toml", ["train.eval_every=100"])
    Trainer(recipe, tmp_path / "proof", max_steps=100, show_progress=False).run()
    last = [m for m in RunDir(tmp_path / "proof").metrics() if m.get("event") == "eval"][-1]
    assert last["step"] == 100 and last["memory_use/carry_gain"] > 0.5


LOW_GAIN = ["model.memory.chunk_size=32", "train.memory_use_min_share=0.01", "train.memory_use_patience=2"]


def test_a_carry_gain_below_the_floor_warns_after_the_patience(write_recipe, tmp_path):
    """One chunk per sequence: the gain is 0, below a 1 % floor at both evaluations (steps 2, 4)."""
    evals(write_recipe, tmp_path / "warn", LOW_GAIN)
    warnings = [m for m in RunDir(tmp_path / "warn").metrics() if m.get("event") == "memory_use_warning"]
    assert [m["step"] for m in warnings] == [4]
    assert "below train.memory_use_min_share 1.00% for 2 evaluations" in warnings[0]["message"]


def test_stop_ends_the_run_with_the_diagnosis_and_keeps_the_last_checkpoint(write_recipe, tmp_path):
    from miraslab.errors import MiraslabError
    from miraslab.train.checkpoint import load_checkpoint

    sets = [*LOW_GAIN, 'train.memory_use_action="stop"', "train.checkpoint_every=2"]
    with pytest.raises(MiraslabError, match=r"run stopped at step 4: memory_use/carry_gain_share 0\.00%"):
        evals(write_recipe, tmp_path / "stop", sets)
    assert load_checkpoint(tmp_path / "stop").step == 2  # step 4's checkpoint is not written


def read_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def test_a_run_ends_with_the_verdict_and_the_picture_used_on_recall(tmp_path, capsys):
    """The delta-rule proof, 45 steps: the last evaluation's accuracy with the state reset is
    far below carried, summary.json says the memory is used, memory_use.png is drawn."""
    from training_cases import SHORT_PROOF

    # 45 steps: the drop on reset is 7.8 points (at 30 it is 5.1, too near the 5-point rule)
    sets = [*SHORT_PROOF, "train.steps=45", "train.eval_every=45"]
    recipe = miraslab.load_recipe(REPO / "recipes" / "mqar" / "delta-proof.toml", sets)
    summary = Trainer(recipe, tmp_path / "proof", show_progress=True).run()
    use = summary["memory_use"]
    assert summary["memory_used"] is True
    assert use["step"] == 45 and use["val_accuracy"] - use["memory_use/reset_accuracy"] > 0.05
    assert 0.0 <= use["memory_use/zero_accuracy"] <= 1.0
    image = read_png(tmp_path / "proof" / "memory_use.png")
    assert image.shape[0] > 200 and image.shape[1] > 500
    out = capsys.readouterr()
    assert "the memory is used at step 45: accuracy" in out.out + out.err


def test_a_memory_that_carries_nothing_is_called_so_at_the_end(write_recipe, tmp_path, capsys):
    loaded = miraslab.load_recipe(write_recipe("r.toml", MQAR_RECIPE), ["model.memory.chunk_size=32"])
    summary = Trainer(loaded, tmp_path / "one", show_progress=True).run()
    assert summary["memory_used"] is False
    out = capsys.readouterr()
    assert "the memory carries nothing across chunks at step 4" in out.out + out.err
    read_png(tmp_path / "one" / "memory_use.png")
