"""The ``mqar`` task: Zoology's multi-query associative recall layout, read back token by token.

Each example is decoded from first principles (pairs at 0..2N−1, queries at even offsets of the
rest, labels at the query positions) rather than compared with the generator's own helpers.
"""

from __future__ import annotations

import pytest
import torch

import miraslab
from miraslab.errors import RecipeError
from miraslab.plugins.task.mqar import MqarParams, MqarTask

SMALL = {"vocab_size": 64, "seq_len": 48, "num_kv_pairs": 6}
SLOTS = (48 - 2 * 6) // 2  # query slots of SMALL: 18, the farthest last key–query distance 36


def mqar(**params: object) -> MqarTask:
    return MqarTask(MqarParams(**{**SMALL, **params}))  # type: ignore[arg-type]


def batches(task: MqarTask, *, batch_size: int = 8, seed: int = 0, split: str = "train", **kwargs: object):
    return task.batches(split, seq_len=task.params.seq_len, batch_size=batch_size, seed=seed, **kwargs)


def batch(task: MqarTask, **kwargs: object) -> dict[str, torch.Tensor]:
    return next(batches(task, **kwargs))


def take(iterator, n: int) -> list[dict[str, torch.Tensor]]:
    return [next(iterator) for _ in range(n)]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the layout -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"random_non_queries": False},
        {"min_query_distance": 20},
        {"power_a": 1.0, "min_query_distance": 7},
    ],
)
def test_every_example_has_the_pairs_first_then_each_key_queried_once_with_its_value_as_label(
    params: dict,
) -> None:
    task = mqar(**params)
    n, length, vocab = 6, 48, 64
    least = task.params.min_query_distance
    out = batch(task, batch_size=64)
    assert {name: (t.shape, t.dtype) for name, t in out.items()} == {
        name: ((64, length), torch.int64) for name in ("inputs", "labels", "distance")
    }
    for inputs, labels, distance in zip(
        *(out[k].tolist() for k in ("inputs", "labels", "distance")), strict=True
    ):
        keys, values = inputs[0 : 2 * n : 2], inputs[1 : 2 * n : 2]
        assert all(1 <= k < vocab // 2 for k in keys) and len(set(keys)) == n
        assert all(vocab // 2 <= v < vocab for v in values) and len(set(values)) == n
        asked = [t for t, label in enumerate(labels) if label != -100]
        assert len(asked) == n
        queried = []
        for t in asked:
            assert t >= 2 * n and (t - 2 * n) % 2 == 0 and t <= length - 2  # a query slot
            key_at = 2 * keys.index(inputs[t])  # the query token is a key of this example
            assert labels[t] == inputs[key_at + 1]  # predicted at the query: its key's value
            assert distance[t] == t - key_at >= max(least, 2)
            queried.append(inputs[t])
        assert sorted(queried) == sorted(keys)
        assert all(d == 0 for t, d in enumerate(distance) if t not in asked)


def test_without_random_non_queries_the_query_region_is_zero_but_for_the_queries() -> None:
    out = batch(mqar(random_non_queries=False), batch_size=32)
    filler = out["labels"] == -100
    filler[:, :12] = False
    assert filler.sum() == 32 * (48 - 12 - 6)
    assert (out["inputs"][filler] == 0).all()


def test_random_non_queries_fill_the_query_region_uniformly_from_the_whole_vocabulary() -> None:
    out = batch(mqar(), batch_size=64)
    filler = out["labels"] == -100
    filler[:, :12] = False
    tokens = out["inputs"][filler]  # 64 · 30 = 1920 draws from [0, 64)
    assert tokens.min() >= 0 and tokens.max() < 64
    counts = torch.bincount(tokens, minlength=64).float()
    assert (counts > 0).all()  # each token expected 30 times; none absent (p ≈ 64·e⁻³⁰)
    assert abs(float(counts[:32].sum() / counts.sum()) - 0.5) < 0.05  # keys' and values' halves alike


@pytest.mark.parametrize("power_a", [0.01, 1.0])
def test_the_first_keys_query_slot_follows_zoologys_power_law(power_a: float) -> None:
    """The first key draws first, from all slots: P(slot s) ∝ a·(s+1)^(a−1), s = 0..slots−1."""
    out = batch(mqar(power_a=power_a), batch_size=4000)
    first_key = out["inputs"][:, :1]
    at = ((out["inputs"] == first_key) & (out["labels"] != -100)).int().argmax(dim=1)
    slots = (at - 12) // 2
    seen = torch.bincount(slots, minlength=SLOTS).double() / len(slots)
    expected = power_a * torch.arange(1, SLOTS + 1, dtype=torch.float64) ** (power_a - 1)
    expected /= expected.sum()
    assert 0.5 * float((seen - expected).abs().sum()) < 0.04  # total variation; ~0.02 expected by chance


def test_at_the_largest_min_query_distance_every_query_is_exactly_that_far() -> None:
    """Distance 2·slots leaves one placement: key j at slot slots − N + j."""
    out = batch(mqar(min_query_distance=2 * SLOTS), batch_size=32)
    asked = out["labels"] != -100
    assert (out["distance"][asked] == 2 * SLOTS).all() and asked.sum() == 32 * 6


# --- seeds, resume and processes ---------------------------------------------------------


def test_the_same_seed_gives_the_same_batches_and_another_seed_others() -> None:
    assert all(map(same, take(batches(mqar()), 3), take(batches(mqar()), 3)))
    assert not same(batch(mqar(), seed=0), batch(mqar(), seed=1))


def test_validation_batches_come_from_another_stream_than_training() -> None:
    train = torch.cat([b["inputs"] for b in take(batches(mqar(), split="train"), 4)])
    val = torch.cat([b["inputs"] for b in take(batches(mqar(), split="val"), 4)])
    assert not (train[:, None, :] == val[None, :, :]).all(dim=2).any()  # no example shared
    assert same(batch(mqar(), split="val"), batch(mqar(), split="val"))  # every evaluation alike


def test_a_resumed_task_continues_with_the_batch_that_would_have_come_next() -> None:
    original = batches(mqar())
    take(original, 3)
    resumed = batches(mqar(), state=original.state_dict())
    assert all(map(same, take(resumed, 2), take(original, 2)))


def test_two_ranks_take_disjoint_halves_of_the_single_process_batch() -> None:
    single = take(batches(mqar()), 3)
    ranks = [take(batches(mqar(), rank=r, world_size=2), 3) for r in range(2)]
    for step, whole in enumerate(single):
        first, second = ranks[0][step], ranks[1][step]
        assert all(torch.equal(torch.cat([first[k], second[k]]), whole[k]) for k in whole)
        assert not (first["inputs"][:, None, :] == second["inputs"][None, :, :]).all(dim=2).any()


def test_the_data_state_is_shared_by_all_ranks_and_resumes_on_one_process() -> None:
    ranks = [batches(mqar(), rank=r, world_size=2) for r in range(2)]
    for each in ranks:
        take(each, 2)
    assert ranks[0].state_dict() == ranks[1].state_dict()
    single = batches(mqar())
    take(single, 2)
    assert same(next(batches(mqar(), state=ranks[1].state_dict())), next(single))


def test_a_state_saved_with_another_seed_or_other_settings_is_an_error() -> None:
    state = batches(mqar()).state_dict()
    with pytest.raises(RecipeError, match="resume with the same seed"):
        batches(mqar(), seed=1, state=state)
    with pytest.raises(RecipeError, match="mqar settings changed"):
        batches(mqar(num_kv_pairs=5), state=state)


# --- through recipes -----------------------------------------------------------------------


def test_the_mqar_task_is_built_from_a_recipe_through_the_registry(write_recipe) -> None:
    path = write_recipe("mqar.toml", '[data]\nseq_len = 128\ntask = { name = "mqar", seq_len = 128 }\n')
    task = miraslab.build_component(miraslab.load_recipe(path).data.task)
    assert isinstance(task, MqarTask) and task.vocab_size() == 8192 and task.tokenizer() is None
    assert task.params.power_a == 0.01 and task.params.random_non_queries is True


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("seq_len = 64, num_kv_pairs = 17", "num_kv_pairs"),  # 2·17 pairs + 17 slots need 68 tokens
        ("num_kv_pairs = 6, vocab_size = 13", "vocab_size"),  # 6 keys need [1, 7): V ≥ 14
        ("seq_len = 63", "seq_len"),  # odd: Zoology's slots are the even offsets
        ("seq_len = 64, num_kv_pairs = 8, min_query_distance = 49", "min_query_distance"),  # ≤ 2·24
    ],
)
def test_a_setting_the_layout_cannot_meet_is_one_line_naming_its_key(
    write_recipe, table: str, key: str
) -> None:
    path = write_recipe("bad.toml", f'[data]\ntask = {{ name = "mqar", {table} }}\n')
    with pytest.raises(RecipeError) as caught:
        miraslab.load_recipe(path)
    message = str(caught.value)
    assert f"data.task.{key}: expected" in message and "\n" not in message


def test_a_data_seq_len_other_than_the_tasks_is_an_error_naming_both() -> None:
    with pytest.raises(RecipeError, match=r"data.seq_len: expected the mqar task's seq_len \(48\), got 64"):
        mqar().batches("train", seq_len=64, batch_size=4, seed=0)
