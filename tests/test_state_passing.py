"""State passing across training steps (data.carry_state): rows that continue, a state carried."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from training_cases import MQAR_RECIPE, write_corpus
from training_cases import write_recipe as write_text_recipe

import miraslab
from miraslab.components import build_component
from miraslab.errors import RecipeError
from miraslab.model.language_model import build_model
from miraslab.train.checkpoint import load_checkpoint
from miraslab.train.run_dir import RunDir
from miraslab.train.state_passing import CarriedState, decode_state, detach_state, encode_state
from miraslab.train.trainer import Trainer


def leaves(value) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    encode_state(value, tensors := {})
    out.extend(tensors.values())
    return out


@pytest.mark.parametrize("layout", ["mal", "mag", "mac", "lmm"])
def test_two_carried_steps_equal_one_forward_over_the_concatenated_segment(write_recipe, layout):
    # float64: exact up to rounding (tolerance 1e-9 on logits of scale ~1)
    recipe = miraslab.load_recipe(
        write_recipe("r.toml", MQAR_RECIPE), [f'model.layout="{layout}"', "model.n_layers=2"]
    )
    torch.manual_seed(0)
    model = build_model(recipe).double().train()
    ids = torch.randint(0, 64, (3, 32))
    whole, whole_state = model(ids, return_state=True)
    carried = CarriedState()
    first = carried.forward(model, ids[:, :16])
    second = carried.forward(model, ids[:, 16:])
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-9)
    got, expected = leaves(carried.states[0]), leaves(whole_state)
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    assert not any(t.requires_grad for t in got)  # detached: the next step's graph stops here


def test_the_gradient_stops_at_the_step_boundary(write_recipe):
    recipe = miraslab.load_recipe(write_recipe("r.toml", MQAR_RECIPE))
    torch.manual_seed(0)
    model = build_model(recipe).train()
    carried = CarriedState()
    ids = torch.randint(0, 64, (2, 32))
    carried.forward(model, ids[:, :16]).sum().backward()
    model.zero_grad()
    carried.forward(model, ids[:, 16:]).sum().backward()  # would fail on a freed graph if not detached


def test_a_state_stored_and_read_back_is_the_same(write_recipe):
    recipe = miraslab.load_recipe(write_recipe("r.toml", MQAR_RECIPE), ['model.layout="mag"'])
    model = build_model(recipe)
    _, state = model(torch.randint(0, 64, (2, 16)), return_state=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = encode_state(detach_state(state), tensors)
    back = decode_state(tree, tensors, "cpu")
    assert type(back) is type(state)
    for a, b in zip(leaves(back), leaves(state), strict=True):
        assert torch.equal(a, b)


# --- the data: rows that continue ------------------------------------------------------------


@pytest.fixture(scope="module")
def text_recipe(tmp_path_factory):
    directory = tmp_path_factory.mktemp("state_passing")
    return write_text_recipe(directory, write_corpus(directory))


def streamed(recipe_path, **options):
    recipe = miraslab.load_recipe(recipe_path)
    task = build_component(recipe.data.task)
    return task.streamed_batches("train", seq_len=16, batch_size=4, seed=recipe.seed, **options)


def test_each_row_continues_the_same_row_of_the_step_before(text_recipe):
    rows = streamed(text_recipe)
    batches = [next(rows) for _ in range(6)]
    assert all(b.shape == (4, 17) for b in batches)
    for before, after in itertools.pairwise(batches):
        assert torch.equal(before[:, -1], after[:, 0])  # the last target is the next first input
    streams = [torch.cat([batches[0][b]] + [batch[b, 1:] for batch in batches[1:]]) for b in range(4)]
    assert len({tuple(s[:16].tolist()) for s in streams}) == 4  # four different streams


def test_a_saved_stream_state_continues_with_the_same_rows(text_recipe):
    rows = streamed(text_recipe)
    for _ in range(3):
        next(rows)
    again = streamed(text_recipe, state=rows.state_dict())
    assert all(torch.equal(next(rows), next(again)) for _ in range(3))


def test_each_process_takes_its_own_rows_of_the_same_streams(text_recipe):
    whole = streamed(text_recipe)
    ranks = [streamed(text_recipe, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        batch = next(whole)
        assert torch.equal(torch.cat([next(r) for r in ranks]), batch)
    assert ranks[0].state_dict() == ranks[1].state_dict() == whole.state_dict()


# --- the trainer -----------------------------------------------------------------------------


def test_carrying_the_state_changes_what_is_trained(text_recipe, tmp_path):
    sets = ["train.steps=2", "train.eval_every=0", "train.checkpoint_every=2"]
    Trainer(miraslab.load_recipe(text_recipe, sets), tmp_path / "off", show_progress=False).run()
    Trainer(
        miraslab.load_recipe(text_recipe, [*sets, "data.carry_state=true"]),
        tmp_path / "on",
        show_progress=False,
    ).run()
    off, on = load_checkpoint(tmp_path / "off"), load_checkpoint(tmp_path / "on")
    assert "carried_state" not in off.meta and on.meta["carried_state"]["world_size"] == 1
    assert not all(torch.equal(off.model[k], on.model[k]) for k in off.model)


# a per-token memory: every part of the model restarts at a document start inside a packed row
PER_TOKEN = ['model.memory.inner_steps="per_token"', 'model.memory.memory="linear"']
CARRIED_DOCUMENTS = ["data.carry_state=true", "data.reset_at_documents=true", *PER_TOKEN]


@pytest.mark.parametrize("documents", [False, True], ids=["rows", "document-resets"])
def test_a_resumed_carried_run_ends_bitwise_where_a_straight_one_does(text_recipe, tmp_path, documents):
    """With document resets, a per-token memory: every part of the model restarts at a document
    start inside a packed row."""
    carried = CARRIED_DOCUMENTS if documents else ["data.carry_state=true"]
    sets = [*carried, "train.steps=4", "train.checkpoint_every=2", "train.eval_every=0"]
    recipe = miraslab.load_recipe(text_recipe, sets)
    straight = Trainer(recipe, tmp_path / "straight", show_progress=False)
    straight.run()
    assert straight.carried is not None and straight.carried.states  # the state was carried
    assert straight.packed_documents == documents
    Trainer(recipe, tmp_path / "resumed", max_steps=2, show_progress=False).run()
    Trainer(
        RunDir(tmp_path / "resumed").load_recipe(), tmp_path / "resumed", resume=True, show_progress=False
    ).run()
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert all(torch.equal(a.model[name], b.model[name]) for name in a.model)
    assert a.meta["data"] == b.meta["data"]
    carried_tensors = [k for k in a.tensors if k.startswith("carried_state")]
    assert carried_tensors and all(torch.equal(a.tensors[k], b.tensors[k]) for k in carried_tensors)


def test_document_resets_change_what_a_carried_run_trains(text_recipe, tmp_path):
    sets = [
        *PER_TOKEN,
        "data.carry_state=true",
        "train.steps=2",
        "train.eval_every=0",
        "train.checkpoint_every=2",
    ]
    for name, extra in (("carried", []), ("reset", ["data.reset_at_documents=true"])):
        Trainer(
            miraslab.load_recipe(text_recipe, [*sets, *extra]), tmp_path / name, show_progress=False
        ).run()
    carried, reset = load_checkpoint(tmp_path / "carried"), load_checkpoint(tmp_path / "reset")
    assert not all(torch.equal(carried.model[k], reset.model[k]) for k in carried.model)


def test_carry_state_refuses_document_resets_a_model_cannot_run_packed_and_a_task_without_documents(
    text_recipe, write_recipe, tmp_path
):
    # the recipe's memory takes mini-batch steps: a document must open a chunk of a row of its own
    with pytest.raises(
        RecipeError,
        match=r"data\.carry_state and data\.reset_at_documents: .*cannot do in a packed row "
        r"\(layer 0 \(mag\): model\.memory\.inner_steps = 'mini_batch'",
    ):
        miraslab.load_recipe(text_recipe, ["data.carry_state=true", "data.reset_at_documents=true"])
    stage = '{steps = 1, overrides = {"model.memory.inner_steps" = "mini_batch"}}'
    with pytest.raises(
        RecipeError, match=r"train\.stages\[1\]\.overrides: data\.carry_state and data\.reset_at_documents"
    ):
        miraslab.load_recipe(text_recipe, [*CARRIED_DOCUMENTS, f"train.stages=[{{steps = 1}}, {stage}]"])
    mqar = miraslab.load_recipe(write_recipe("m.toml", MQAR_RECIPE), ["data.carry_state=true"])
    with pytest.raises(RecipeError, match=r"data\.carry_state: task .* has no stream of documents"):
        Trainer(mqar, tmp_path / "mqar", show_progress=False).run()


@pytest.mark.slow
def test_torchrun_ranks_carry_their_own_rows_and_reproduce_the_single_process_curve(text_recipe, tmp_path):
    """gloo, global batch 4 = 2 x 2: each process carries its two rows' state. Tolerance: relative
    1e-5 per logged loss (as for the uncarried curve in test_train.py)."""
    sets = ["data.carry_state=true", "train.steps=4", "train.checkpoint_every=4", "train.eval_every=0"]
    Trainer(miraslab.load_recipe(text_recipe, sets), tmp_path / "single", show_progress=False).run()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "miraslab", "train"]
    command += [str(text_recipe), "--out", str(tmp_path / "ddp"), "--quiet"]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    def losses(run):
        return [(m["step"], m["loss"]) for m in RunDir(run).metrics() if "loss" in m]

    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert [s for s, _ in single] == [s for s, _ in ddp]
    for (_, a), (_, b) in zip(single, ddp, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
    saved = load_checkpoint(tmp_path / "ddp").meta["carried_state"]
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2
