"""The MAD tasks (Poli et al. 2024, athms/mad-lab): each example read back from first principles.

Every layout test decodes the rows the way the task's definition reads (pairs, motifs, the
copy token, the insert token) and checks the labels against what the inputs determine, never
against the generator's own helpers.  Then what all six share: one fixed training set visited
in a new order each epoch, a validation set of its own, determinism, rank shards and resume.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import REPO

import miraslab
from miraslab.errors import RecipeError

IGNORE = -100
TASKS = (
    "mad_in_context_recall",
    "mad_fuzzy_recall",
    "mad_noisy_recall",
    "mad_selective_copying",
    "mad_compression",
    "mad_memorization",
)


def mad(name: str, **params: object):
    info = miraslab.get_registry().get("task", name)
    return info.factory(info.params(**params))


def batches(task, split: str = "val", *, batch_size: int = 32, seed: int = 0, **kwargs):
    return task.batches(split, seq_len=task.input_length(), batch_size=batch_size, seed=seed, **kwargs)


def batch(task, split: str = "val", **kwargs) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in next(batches(task, split, **kwargs)).items()}


def take(iterator, n: int) -> list[dict[str, torch.Tensor]]:
    return [next(iterator) for _ in range(n)]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def rows_of(out: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(row) for row in out["inputs"].tolist()]


def rows_in(steps: list[dict[str, torch.Tensor]]) -> list[tuple[int, ...]]:
    return [row for out in steps for row in rows_of(out)]


# --- in-context recall and noisy in-context recall ------------------------------------------


def check_recall_row(inputs, labels, distance, *, keys: int, symbols: int, multi_query: bool = True) -> int:
    """Walk the pairs; return how many are noise.  Answers: the value a key had before."""
    length = len(inputs)
    value_of: dict[int, int] = {}
    last_at: dict[int, int] = {}
    noise = 0
    pairs_end = length - 2 if multi_query else length - 3  # the probe pair (and copy token) after
    for at in range(0, pairs_end, 2):
        key, value = inputs[at], inputs[at + 1]
        assert labels[at + 1] == IGNORE
        if key >= symbols:  # a noise pair: both tokens noise, nothing asked
            assert value >= symbols and labels[at] == IGNORE
            noise += 1
            continue
        assert 0 <= key < keys <= value < symbols
        assert value_of.setdefault(key, value) == value, "a key keeps its value through the sequence"
        if multi_query and key in last_at:
            assert labels[at] == value and distance[at] == at - last_at[key]
        else:
            assert labels[at] == IGNORE
        last_at[key] = at
    if not multi_query:
        assert inputs[length - 2] == symbols  # the copy token, V − 1, right after the pairs
    probe = length - 2 if multi_query else length - 1
    key = inputs[probe]
    assert key in value_of, "the probe asks a key shown before"
    assert labels[probe] == value_of[key] and distance[probe] == probe - last_at[key]
    if multi_query:
        assert inputs[length - 1] == value_of[key] and labels[length - 1] == IGNORE
    return noise


def test_in_context_recall_labels_each_repeated_key_with_the_value_it_was_paired_with() -> None:
    out = batch(mad("mad_in_context_recall"), batch_size=64)
    assert {name: a.shape for name, a in out.items()} == {
        n: (64, 128) for n in ("inputs", "labels", "distance")
    }
    for row in zip(out["inputs"].tolist(), out["labels"].tolist(), out["distance"].tolist(), strict=True):
        assert check_recall_row(*row, keys=8, symbols=16) == 0
    # keys uniform over the 8 key tokens: each near 1/8 of the 64 × 63 key slots
    counts = Counter(out["inputs"][:, 0:126:2].ravel().tolist())
    assert sorted(counts) == list(range(8)) and min(counts.values()) > 0.8 * 64 * 63 / 8


def test_in_context_recall_without_multi_query_asks_only_the_probe_after_a_copy_token() -> None:
    out = batch(mad("mad_in_context_recall", multi_query=False))
    for inputs, labels, distance in zip(
        out["inputs"].tolist(), out["labels"].tolist(), out["distance"].tolist(), strict=True
    ):
        check_recall_row(inputs, labels, distance, keys=7, symbols=15, multi_query=False)
        assert sum(label != IGNORE for label in labels) == 1


def test_noisy_recall_fills_a_fifth_of_the_pair_slots_with_noise_tokens() -> None:
    out = batch(mad("mad_noisy_recall"), batch_size=64)
    noise = 0
    for row in zip(out["inputs"].tolist(), out["labels"].tolist(), out["distance"].tolist(), strict=True):
        noise += check_recall_row(*row, keys=8, symbols=16)
    assert out["inputs"].max() < 32 and (out["inputs"] >= 16).any()
    # 20 % of 64 × 63 slots: a binomial's standard deviation is 0.6 %; tolerance 3 points
    assert abs(noise / (64 * 63) - 0.2) < 0.03


@pytest.mark.parametrize("multi_query", [True, False])
def test_the_probe_asks_a_key_shown_before_even_when_few_of_the_keys_are_shown(multi_query: bool) -> None:
    # 63 keys, 7 pairs: a probe drawn over all keys would mostly ask one never shown
    out = batch(
        mad("mad_in_context_recall", vocab_size=128, seq_len=16, multi_query=multi_query), batch_size=64
    )
    keys, symbols = (64, 128) if multi_query else (63, 127)
    for row in zip(out["inputs"].tolist(), out["labels"].tolist(), out["distance"].tolist(), strict=True):
        check_recall_row(*row, keys=keys, symbols=symbols, multi_query=multi_query)


def test_noise_never_fills_every_pair_slot() -> None:
    # one pair slot and 90 % noise: without mad-lab's one slot kept real, most rows would have none
    out = batch(mad("mad_noisy_recall", seq_len=4, frac_noise=0.9), batch_size=64)
    for row in zip(out["inputs"].tolist(), out["labels"].tolist(), out["distance"].tolist(), strict=True):
        assert check_recall_row(*row, keys=8, symbols=16) == 0


@pytest.mark.parametrize("name", ["mad_in_context_recall", "mad_noisy_recall", "mad_fuzzy_recall"])
def test_recall_training_scores_every_next_token_as_mad_lab_trains(name: str) -> None:
    out = batch(mad(name, train_examples=0), "train")
    assert (out["labels"][:, :-1] == out["inputs"][:, 1:]).all()
    # the last label: past the end of a recall row (its stream is L tokens), the probe value's
    # last token for fuzzy recall (mad-lab's stream is L + 1 tokens, the last not an input)
    last = out["labels"][:, -1]
    assert (last == IGNORE).all() if name != "mad_fuzzy_recall" else ((last >= 7) & (last < 15)).all()
    answers = batch(mad(name, train_examples=0, train_labels="answers"), "train")
    assert (answers["inputs"] == out["inputs"]).all()
    asked = answers["labels"] != IGNORE
    # an answer is the token after its key: what next-token training asks there too
    assert (answers["labels"][asked] == out["labels"][asked]).all() and asked.sum() < out["labels"].size / 2


def test_recall_training_rows_with_answer_labels_follow_the_validation_rule() -> None:
    out = batch(mad("mad_noisy_recall", train_labels="answers"), "train")
    for row in zip(out["inputs"].tolist(), out["labels"].tolist(), out["distance"].tolist(), strict=True):
        check_recall_row(*row, keys=8, symbols=16)


# --- fuzzy in-context recall -----------------------------------------------------------------


def fuzzy_pairs(inputs: list[int], labels: list[int], *, keys: int, pad: int):
    """(key motif, value motif, start of the pair) read off the runs of key and value tokens;
    the last value motif is completed from the last label (its final token is not an input)."""
    at = 0
    while inputs[at] == pad:
        at += 1
    assert pad not in inputs[at:], "padding only on the left"
    runs: list[tuple[bool, list[int], int]] = []  # (is key, tokens, start)
    for position in range(at, len(inputs)):
        is_key = inputs[position] < keys
        if runs and runs[-1][0] == is_key:
            runs[-1][1].append(inputs[position])
        else:
            runs.append((is_key, [inputs[position]], position))
    if runs[-1][0]:  # the input ends inside the probe's key: its one-token value is the last label
        runs.append((False, [], len(inputs)))
    runs[-1][1].append(labels[-1])
    assert [r[0] for r in runs] == [True, False] * (len(runs) // 2), "key and value motifs alternate"
    return [(tuple(runs[i][1]), tuple(runs[i + 1][1]), runs[i][2]) for i in range(0, len(runs), 2)]


@pytest.mark.parametrize("split", ["val", "train"])
def test_fuzzy_recall_labels_the_value_motif_of_every_key_motif_seen_before(split: str) -> None:
    task = mad("mad_fuzzy_recall", train_labels="answers", train_examples=0)
    out = batch(task, split, batch_size=32)
    key_sizes, value_sizes = Counter(), Counter()
    for inputs, labels, distance in zip(
        out["inputs"].tolist(), out["labels"].tolist(), out["distance"].tolist(), strict=True
    ):
        pairs = fuzzy_pairs(inputs, labels, keys=7, pad=15)
        expected = [IGNORE] * len(inputs)
        gaps = [0] * len(inputs)
        value_of: dict[tuple, tuple] = {}
        last_at: dict[tuple, int] = {}
        for index, (key, value, start) in enumerate(pairs):
            assert len(set(key)) == len(key) and len(set(value)) == len(value), (
                "a motif's tokens are distinct"
            )
            assert all(7 <= v < 15 for v in value)
            assert value_of.setdefault(key, value) == value, "a key motif keeps its value motif"
            key_sizes[len(key)] += 1
            value_sizes[len(value)] += 1
            if key in last_at or index == len(pairs) - 1:
                assert key in last_at, "the final probe asks a key shown before"
                first = start + len(key) - 1  # the key's last token predicts the value's first
                for offset, token in enumerate(value):
                    expected[first + offset] = token
                    gaps[first + offset] = start - last_at[key]
            last_at[key] = start
        assert labels == expected
        assert distance == gaps
    assert set(value_sizes) == {1, 2, 3}
    # validation asks only full-size keys ("always prompt at the maximum key motif size")
    assert set(key_sizes) == ({3} if split == "val" else {1, 2, 3})


def test_fuzzy_recall_rows_are_the_sequence_length_and_the_vocabulary() -> None:
    out = batch(mad("mad_fuzzy_recall", vocab_size=32, seq_len=64))
    assert out["inputs"].shape == (32, 64) and out["inputs"].min() >= 0 and out["inputs"].max() < 32
    assert (out["inputs"][:, 0] == 31).mean() > 0.5  # most rows begin padded (a pair does not fill the end)


# --- selective copying -----------------------------------------------------------------------


@pytest.mark.parametrize("selective", [True, False])
def test_selective_copying_labels_are_the_non_blank_tokens_in_order_after_the_copy_token(
    selective: bool,
) -> None:
    vocab, length, n = 16, 256, 16
    blank, copy = vocab - 2, vocab - 1
    out = batch(mad("mad_selective_copying", selective=selective), batch_size=32)
    first_positions = []
    for inputs, labels, distance in zip(
        out["inputs"].tolist(), out["labels"].tolist(), out["distance"].tolist(), strict=True
    ):
        prefix = inputs[: length - n - 1]
        where = [i for i, token in enumerate(prefix) if token != blank]
        assert len(where) == n and all(0 <= prefix[i] < vocab - 2 for i in where)
        assert inputs[length - n - 1] == copy and inputs[length - n :] == [blank] * n
        assert labels[: length - n] == [IGNORE] * (length - n)
        assert labels[length - n :] == [prefix[i] for i in where]
        assert distance[length - n :] == [length - n + j - where[j] for j in range(n)]
        first_positions.append(where[0])
        if selective:  # mad-lab inserts blanks only before tokens: the last sits by the copy token
            assert where[-1] == length - n - 2
        else:
            assert where == list(range(n))
    if selective:  # the tokens are scattered: the first one's position varies, ~ 223/16 blanks before it
        assert len(set(first_positions)) > 5 and 5 < np.mean(first_positions) < 25


# --- compression -----------------------------------------------------------------------------


def test_compression_rows_read_the_sequence_then_write_it_back_after_the_compression_token() -> None:
    vocab, length = 16, 32
    out = batch(mad("mad_compression"), batch_size=32)
    assert out["inputs"].shape == (32, 2 * length) and "distance" not in out
    inputs, labels = out["inputs"], out["labels"]
    assert (inputs[:, : length - 1] < vocab - 1).all() and (inputs[:, length - 1 :] == vocab - 1).all()
    # the label at the compression token and after it: the L tokens read, compression token included
    assert (labels[:, length - 1 : 2 * length - 1] == inputs[:, :length]).all()
    assert (labels[:, : length - 1] == IGNORE).all() and (labels[:, -1] == IGNORE).all()
    assert len(np.unique(inputs[:, : length - 1])) == vocab - 1


def test_compression_noise_replaces_tokens_with_noise_tokens_that_are_still_scored() -> None:
    out = batch(mad("mad_compression", noise_vocab_size=4, frac_noise=0.5), batch_size=32)
    read = out["inputs"][:, :31]
    assert 0.4 < (read >= 11).mean() < 0.6 and (read < 15).all()
    assert (out["labels"][:, 31:63] == out["inputs"][:, :32]).all()


# --- memorization ----------------------------------------------------------------------------


def memorization_map(out: dict[str, np.ndarray], vocab: int = 256) -> dict[int, int]:
    """key -> value as the rows show it; asserts the layout (key, insert token) and that it is a map."""
    inputs, labels = out["inputs"], out["labels"]
    assert (inputs[:, 1::2] == vocab - 1).all() and (labels[:, 0::2] == IGNORE).all()
    keys, values = inputs[:, 0::2].ravel().tolist(), labels[:, 1::2].ravel().tolist()
    mapping: dict[int, int] = {}
    for key, value in zip(keys, values, strict=True):
        assert 0 <= key < 127 <= value < 255
        assert mapping.setdefault(key, value) == value, "one value per key, in every example"
    return mapping


def test_memorization_asks_at_each_insert_token_the_value_one_fixed_map_gives_the_key() -> None:
    task = mad("mad_memorization")
    train = {n: t.numpy() for n, t in next(batches(task, "train", batch_size=256)).items()}
    val = batch(task, "val", batch_size=256)
    seen, asked = memorization_map(train), memorization_map(val)
    assert len(seen) == 127, "256 × 16 key draws cover the 127 keys"
    assert all(seen[key] == value for key, value in asked.items()), "validation asks the training map"
    assert len(set(seen.values())) == len(seen), "distinct keys have distinct values"
    other = memorization_map(batch(task, "val", batch_size=256, seed=1))
    assert sum(other[k] != seen[k] for k in other) > 100, "another seed, another map"


def test_memorization_trains_on_256_examples_and_validates_on_fresh_ones_or_on_them() -> None:
    task = mad("mad_memorization")
    epoch = take(batches(task, "train", batch_size=64), 8)  # two epochs of 4 batches
    first, second = (set(rows_in(epoch[i : i + 4])) for i in (0, 4))
    assert len(first) == 256 and first == second
    assert not set(rows_of(next(batches(task, "val", batch_size=64)))) & first
    on_train = mad("mad_memorization", val_set="train")
    assert set(rows_of(next(batches(on_train, "val", batch_size=64)))) <= first


# --- what all six share ----------------------------------------------------------------------

SMALL = {"train_examples": 24, "val_examples": 16}


@pytest.mark.parametrize("name", TASKS)
def test_the_training_set_is_fixed_and_each_epoch_visits_it_once_in_a_new_order(name: str) -> None:
    task = mad(name, **SMALL)
    steps = take(batches(task, "train", batch_size=8), 6)  # two epochs of 24
    epochs = [rows_in(steps[i : i + 3]) for i in (0, 3)]
    assert len(set(epochs[0])) == 24 and sorted(epochs[0]) == sorted(epochs[1])
    assert epochs[0] != epochs[1]
    # the set does not depend on the batch size
    assert sorted(epochs[0]) == sorted(rows_in(take(batches(task, "train", batch_size=12), 2)))


@pytest.mark.parametrize("name", TASKS)
def test_validation_is_its_own_fixed_set_in_order(name: str) -> None:
    task = mad(name, **SMALL)
    val = take(batches(task, "val", batch_size=8), 3)
    assert same(val[0], val[2]) and not same(val[0], val[1])  # 16 examples, then again
    train = set(rows_in(take(batches(task, "train", batch_size=8), 3)))
    assert not set(rows_of(val[0]) + rows_of(val[1])) & train


@pytest.mark.parametrize("name", TASKS)
def test_the_same_seed_gives_the_same_batches_and_another_seed_others(name: str) -> None:
    task = mad(name, **SMALL)
    for split in ("train", "val"):
        a, b = take(batches(task, split, seed=3), 2), take(batches(task, split, seed=3), 2)
        assert all(same(x, y) for x, y in zip(a, b, strict=True))
        assert not same(a[0], next(batches(task, split, seed=4)))


@pytest.mark.parametrize("name", TASKS)
def test_two_ranks_take_disjoint_halves_of_the_single_process_batch(name: str) -> None:
    task = mad(name, **SMALL)
    for split in ("train", "val"):
        whole = take(batches(task, split, batch_size=8), 4)  # crosses an epoch of training
        halves = [take(batches(task, split, batch_size=8, rank=r, world_size=2), 4) for r in (0, 1)]
        for step in range(4):
            for key, tensor in whole[step].items():
                assert torch.equal(torch.cat([halves[0][step][key], halves[1][step][key]]), tensor)


@pytest.mark.parametrize("name", TASKS)
def test_a_resumed_task_continues_with_the_batch_that_would_have_come_next(name: str) -> None:
    task = mad(name, **SMALL)
    straight = take(batches(task, "train", batch_size=8), 5)
    first = batches(task, "train", batch_size=8, rank=1, world_size=2)
    take(first, 3)
    state = first.state_dict()
    resumed = batches(task, "train", batch_size=8, state=state)  # on one process now
    assert same(next(resumed), straight[3]) and same(next(resumed), straight[4])


def test_a_state_saved_with_another_seed_task_or_settings_is_an_error() -> None:
    task = mad("mad_in_context_recall", **SMALL)
    iterator = batches(task, "train")
    next(iterator)
    state = iterator.state_dict()
    with pytest.raises(RecipeError, match="same seed"):
        batches(task, "train", seed=1, state=state)
    with pytest.raises(RecipeError, match="settings changed"):
        batches(mad("mad_in_context_recall", train_examples=25, val_examples=16), "train", state=state)
    with pytest.raises(RecipeError, match="cannot resume the mad_noisy_recall"):
        batches(mad("mad_noisy_recall", **SMALL), "train", state=state)


@pytest.mark.parametrize("name", TASKS)
def test_without_a_training_set_every_row_is_a_fresh_example(name: str) -> None:
    rows = rows_in(take(batches(mad(name, train_examples=0), "train", batch_size=16), 4))
    assert len(set(rows)) == 64


@pytest.mark.parametrize("name", TASKS)
def test_every_token_is_in_the_vocabulary_and_a_data_seq_len_other_than_the_rows_is_an_error(
    name: str,
) -> None:
    task = mad(name, **SMALL)
    out = batch(task)
    assert out["inputs"].min() >= 0 and out["inputs"].max() < task.vocab_size()
    scored = out["labels"][out["labels"] != IGNORE]
    assert scored.size and scored.min() >= 0 and scored.max() < task.vocab_size()
    with pytest.raises(RecipeError, match=f"data.seq_len: expected the {name} task's row length"):
        task.batches("train", seq_len=task.input_length() + 2, batch_size=4, seed=0)


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("mad_in_context_recall", {"seq_len": 127}, "seq_len"),
        ("mad_noisy_recall", {"noise_vocab_size": 0}, "noise_vocab_size"),
        ("mad_fuzzy_recall", {"vocab_size": 6}, "vocab_size"),
        ("mad_selective_copying", {"seq_len": 33}, "seq_len"),
        ("mad_memorization", {"seq_len": 31}, "seq_len"),
    ],
)
def test_a_setting_the_layout_cannot_meet_is_refused_naming_its_key(name, params, key, write_recipe) -> None:
    table = ", ".join(f"{k} = {v}" for k, v in params.items())
    path = write_recipe("bad.toml", f'[data]\ntask = {{ name = "{name}", {table} }}\n')
    with pytest.raises(RecipeError, match=f"data.task.{key}"):
        miraslab.load_recipe(path)


# --- the recipes and the MAD table -----------------------------------------------------------

RECIPES = sorted((REPO / "recipes" / "mad").glob("*.toml"))
TINY = [
    "train.steps=2",
    "train.batch_size=4",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "model.d_model=32",
    "data.task.train_examples=16",
    "data.task.val_examples=8",
]
sys.path.insert(0, str(REPO / "benchmarks"))
import mad_table  # noqa: E402  (a script beside the benchmarks, not a package)


def test_there_is_a_recipe_for_every_mad_task() -> None:
    assert sorted(miraslab.load_recipe(p).data.task.name for p in RECIPES) == sorted(TASKS)
    assert sorted(p.stem for p in RECIPES) == sorted(mad_table.TASKS)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_mad_recipe_validates_with_the_cli(path, capsys) -> None:
    from miraslab.cli import main

    assert main(["recipe", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and path.name in out


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_mad_recipe_trains_two_steps_and_evaluates(path, tmp_path) -> None:
    from miraslab.train.run_dir import RunDir
    from miraslab.train.trainer import Trainer

    recipe = miraslab.load_recipe(path, TINY)
    Trainer(recipe, tmp_path / "run", show_progress=False).run()
    metrics = list(RunDir(tmp_path / "run").metrics())
    assert len([m for m in metrics if "loss" in m]) == 2
    assert [0 <= m["val_accuracy"] <= 1 for m in metrics if m.get("event") == "eval"] == [True]


@pytest.mark.parametrize("model", list(mad_table.MODELS))
def test_every_table_model_runs_on_every_mad_recipe_by_set_alone(model: str) -> None:
    for path in RECIPES:
        recipe = miraslab.load_recipe(path, mad_table.model_sets(model))
        assert recipe.data.task.name.startswith("mad_")
        assert recipe.model.d_model == 128  # the MAD recipe's size, not the paper recipe's
    assert miraslab.load_recipe(RECIPES[0], mad_table.model_sets(model)).model.layout.name == (
        miraslab.load_recipe(REPO / mad_table.MODELS[model]).model.layout.name
    )


def test_the_mad_table_command_prints_the_table_beside_the_atlas_paper(tmp_path, capsys) -> None:
    argv = ["--tasks", "memorization", "--models", "transformer", "--steps", "1", "--batch-size", "8"]
    argv += ["--d-model", "16", "--eval-examples", "8", "--threads", "1", "--json", str(tmp_path / "t.json")]
    assert mad_table.main(argv) == 0
    table = capsys.readouterr().out
    assert "| transformer |" in table and "| ATLAS paper: Atlas | 91.4 | 79.50 (all five) | – |" in table
    assert (tmp_path / "t.json").exists()
    # the same table again from the JSON, without training, and drawn as a PNG
    assert mad_table.main(["--from-json", str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png")]) == 0
    again = capsys.readouterr().out
    assert again.startswith(table.strip().split("\n")[0]) and "| transformer |" in again
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the paper's averages are the means of its five tasks
    for row in mad_table.ATLAS_PAPER.values():
        assert sum(row[t] for t in mad_table.ATLAS_TASKS) / 5 == pytest.approx(row["average"], abs=0.005)


def test_the_mad_table_in_the_docs_is_the_one_its_json_prints(capsys) -> None:
    """docs/benchmarks.md shows the table generated into benchmarks/results/, not one typed by hand."""
    results = REPO / "benchmarks" / "results" / "mad_table.json"
    assert mad_table.main(["--from-json", str(results)]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(mad_table.MODELS) + len(mad_table.ATLAS_PAPER)
    docs = (REPO / "docs" / "benchmarks.md").read_text()
    assert "\n".join(table) in docs
    settings = json.loads(results.read_text())["settings"]
    assert f"{settings['steps']} steps of batch {settings['batch_size']}" in docs


def test_the_mad_table_lays_the_storing_inits_and_overrides_last(capsys) -> None:
    """--storing-inits adds the deep memory's storing inits (shift keys among them) to
    titans-mag and nothing to gated-deltanet's linear memory; --set lands after both."""
    args = ["--show-sets", "--storing-inits", "--models", "titans-mag", "gated-deltanet"]
    assert mad_table.main(args) == 0
    titans, gated = capsys.readouterr().out.splitlines()
    assert "model.memory.conv_init=shift_keys" in titans and "model.memory.retention.init=0.999" in titans
    assert "conv_init" not in gated
    parsed = mad_table.parse_args(["--storing-inits", "--set", "model.memory.chunk_size=2"])
    sets = mad_table.model_sets("titans-mag", parsed.storing_inits) + mad_table.reduced_sets(parsed)
    assert sets[-1] == "model.memory.chunk_size=2"
    recipe = miraslab.load_recipe(mad_table.REPO / mad_table.TASKS["in-context-recall"], sets)
    assert recipe.model.memory.chunk_size == 2 and recipe.model.memory.conv_init == "shift_keys"
