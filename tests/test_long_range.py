"""The long-range evaluation: recall-hit classes, buckets, conditions and bootstrap intervals."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from training_cases import write_corpus, write_recipe

import miraslab
from miraslab.cli import main
from miraslab.cli.evaluation_data import validation_batches
from miraslab.components import build_component
from miraslab.data.batch import IGNORE
from miraslab.evaluation import evaluate
from miraslab.long_range import (
    BEYOND,
    NEAR,
    OTHER,
    RECALL_CARRY_GAIN,
    RECALL_HITS_SHARE,
    bucket_edges,
    long_range_evaluation,
    model_window,
    position_bucket,
    recall_classes,
    summarise,
)
from miraslab.memory_use import verdict
from miraslab.model.language_model import build_model
from miraslab.train.run_dir import RunDir, load_run
from miraslab.train.trainer import Trainer


def oracle_classes(inputs: list[int], targets: list[int], window: int) -> list[int]:
    """A plain double loop: for each target, every earlier position with the same bigram."""
    out = []
    for t in range(len(targets)):
        if targets[t] == IGNORE:
            out.append(OTHER)
            continue
        distances = [
            t - j
            for j in range(t)
            if targets[j] != IGNORE and inputs[j] == inputs[t] and targets[j] == targets[t]
        ]
        if not distances:
            out.append(OTHER)
        elif min(distances) <= window:
            out.append(NEAR)
        else:
            out.append(BEYOND)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_recall_classes_match_a_plain_loop_oracle(seed):
    generator = random.Random(seed)
    rows, length, vocab, window = 3, 60, 4 + seed, 1 + seed * 3
    stream = [[generator.randrange(vocab) for _ in range(length + 1)] for _ in range(rows)]
    inputs = torch.tensor([s[:-1] for s in stream])
    targets = torch.tensor([s[1:] for s in stream])
    targets[0, 50:] = IGNORE  # a padded row: pads are neither classified nor occurrences
    got = recall_classes(inputs, targets, window)
    for row in range(rows):
        expected = oracle_classes(inputs[row].tolist(), targets[row].tolist(), window)
        assert got[row].tolist() == expected
    assert {BEYOND, NEAR, OTHER} <= set(got.flatten().tolist())  # every class exercised


def test_a_hand_made_row_has_one_hit_of_each_kind():
    # bigram (1, 2) at targets 0, 2 (distance 2: near at W = 3) and 9 (distance 7: beyond)
    inputs = torch.tensor([[1, 5, 1, 6, 7, 8, 9, 3, 4, 1]])
    targets = torch.tensor([[2, 1, 2, 7, 8, 9, 3, 4, 1, 2]])
    classes = recall_classes(inputs, targets, window=3)[0].tolist()
    assert classes[2] == NEAR and classes[9] == BEYOND
    assert classes.count(OTHER) == 8


def test_position_buckets_double_after_the_first_window():
    position = torch.arange(70)
    bucket = position_bucket(position, 8)
    for p, b in zip(position.tolist(), bucket.tolist(), strict=True):
        low, high = bucket_edges(b, 8)
        assert low <= p < high
    assert [bucket_edges(b, 8) for b in range(4)] == [(0, 8), (8, 16), (16, 32), (32, 64)]


def test_bootstrap_is_seeded_and_a_paired_gain_of_a_constant_shift_has_no_width():
    counts = torch.rand(20, 5, dtype=torch.float64) * 10 + 1
    carried = torch.rand(20, 5, dtype=torch.float64) * counts
    sums = {"carried": carried, "reset": carried + 0.5 * counts}  # every token 0.5 nats worse
    a = summarise(counts, sums, 1, 4, resamples=200, seed=7)
    b = summarise(counts, sums, 1, 4, resamples=200, seed=7)
    assert a == b
    gain = a["classes"]["beyond"]["gain"]["carry"]
    assert gain["mean"] == pytest.approx(0.5) and gain["high"] - gain["low"] == pytest.approx(0.0, abs=1e-9)
    loss = a["classes"]["beyond"]["loss"]["carried"]
    assert loss["low"] < loss["mean"] < loss["high"]


# --- on trained text runs: the command, the trainer's metric ----------------------------------

SHORT = ["train.steps=4", "train.eval_every=4", "train.checkpoint_every=4"]


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    """A MAG run and its sliding-window twin (same window, data, steps), a few seconds each."""
    directory = tmp_path_factory.mktemp("long_range")
    recipe = write_recipe(directory, write_corpus(directory))
    Trainer(miraslab.load_recipe(recipe, SHORT), directory / "mag", show_progress=False).run()
    Trainer(
        miraslab.load_recipe(recipe, [*SHORT, 'model.layout="swa"']), directory / "swa", show_progress=False
    ).run()
    return directory


def long_range_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--long-range", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_command_gives_four_conditions_whose_counts_add_up_and_whose_gains_are_differences(
    text_runs, capsys
):
    result = long_range_json(
        capsys,
        str(text_runs / "mag"),
        "--twin",
        str(text_runs / "swa"),
        "--batches",
        "2",
        "--resamples",
        "50",
    )
    assert result["conditions"] == ["carried", "reset", "zero", "twin"]
    assert result["window"] == 16 and result["window_from"] == "model.attention.window"
    assert result["bootstrap"] == {"resamples": 50, "seed": 0, "level": 0.95, "over": "rows"}
    total = result["all"]["tokens"]
    assert total == 2 * 4 * 32  # batches x rows x seq_len: reset_at_documents is off
    assert sum(c["tokens"] for c in result["classes"].values()) == total
    assert sum(b["tokens"] for b in result["by_position"]) == total
    assert [(b["from"], b["to"]) for b in result["by_position"]] == [(0, 16), (16, 32)]
    for column in [result["all"], *result["classes"].values(), *result["by_position"]]:
        loss, gain = column["loss"], column["gain"]
        for name, condition in (("carry", "reset"), ("read", "zero"), ("twin", "twin")):
            assert gain[name]["mean"] == pytest.approx(
                loss[condition]["mean"] - loss["carried"]["mean"], abs=1e-9
            )
    assert (text_runs / "mag" / "long_range.png").stat().st_size > 10_000


def test_the_carried_loss_over_every_token_is_the_evaluation_loss(text_runs, capsys):
    run = load_run(text_runs / "mag")
    batches = validation_batches(build_component(run.recipe.data.task), run.recipe, 2)
    result = long_range_json(capsys, str(text_runs / "mag"), "--batches", "2", "--resamples", "10")
    assert result["all"]["loss"]["carried"]["mean"] == pytest.approx(
        evaluate(run.model, batches)["loss"], rel=1e-5
    )
    assert result["conditions"] == ["carried", "reset", "zero"]  # no twin given


def test_a_local_text_file_is_cut_into_rows_of_the_runs_seq_len(text_runs, capsys, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("\n".join(f"def function_{i}(value):\n    return value + {i}\n" for i in range(60)))
    result = long_range_json(capsys, str(text_runs / "mag"), "--text", str(text), "--resamples", "10")
    assert result["all"]["tokens"] % 32 == 0 and result["all"]["tokens"] > 0
    assert result["classes"]["beyond"]["tokens"] > 0  # the same few lines recur beyond 16 tokens
    assert result["data"] == str(text)


def test_text_files_shorter_than_a_row_are_skipped_and_named(text_runs, capsys, tmp_path):
    long, short = tmp_path / "long.py", tmp_path / "short.py"
    long.write_text("\n".join(f"def function_{i}(value):\n    return value + {i}\n" for i in range(60)))
    short.write_text("x = 1\n")
    mag = str(text_runs / "mag")
    assert (
        main(["eval", mag, "--long-range", "--json", "--resamples", "10", "--text", str(long), str(short)])
        == 0
    )
    assert "--text: skipped 1 file(s) shorter than one row of 33 tokens: short.py" in capsys.readouterr().err
    assert main(["eval", mag, "--long-range", "--text", str(short)]) == 2
    assert "--text: no file holds one row of 33 tokens" in capsys.readouterr().err


def test_wrong_uses_are_one_line_errors(text_runs, capsys, tmp_path):
    mag = str(text_runs / "mag")
    assert main(["eval", mag, "--twin", str(text_runs / "swa")]) == 2
    assert "--twin applies to --long-range, which is not given" in capsys.readouterr().err
    assert main(["eval", mag, "--long-range", "--window", "0"]) == 2
    assert "--window: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["eval", mag, "--long-range", "--memory", "reset"]) == 2
    assert "--memory" in capsys.readouterr().err


def test_a_full_attention_model_needs_a_window(text_runs):
    recipe = miraslab.load_recipe(text_runs / "tiny.toml", ["model.attention.window=0"])
    assert model_window(build_model(recipe)) is None
    lmm = miraslab.load_recipe(text_runs / "tiny.toml", ['model.layout="lmm"'])
    assert model_window(build_model(lmm)) == (8, "model.memory.chunk_size")


def test_the_trainer_logs_the_recall_hit_carry_gain_of_the_same_batches(text_runs):
    last = [m for m in RunDir(text_runs / "mag").metrics() if m.get("event") == "eval"][-1]
    run = load_run(text_runs / "mag")
    batches = validation_batches(
        build_component(run.recipe.data.task), run.recipe, run.recipe.train.eval_batches
    )
    expected = long_range_evaluation(run.model, batches, 16, resamples=10)
    assert last[RECALL_CARRY_GAIN] == pytest.approx(
        expected["classes"]["beyond"]["gain"]["carry"]["mean"], abs=1e-5
    )
    hits = expected["classes"]["beyond"]["tokens"] / expected["all"]["tokens"]
    assert last[RECALL_HITS_SHARE] == pytest.approx(hits)
    assert "beyond-window recall hits" in verdict(last)
    swa = [m for m in RunDir(text_runs / "swa").metrics() if m.get("event") == "eval"][-1]
    assert RECALL_CARRY_GAIN not in swa  # no memory, no gain


def test_another_dataset_is_read_with_the_runs_tokenizer(text_runs, capsys, tmp_path, monkeypatch):
    from miraslab.plugins.task.text import TextTask

    def refuse(self):
        raise AssertionError("a tokenizer was trained on the other dataset")

    monkeypatch.setattr(TextTask, "_trained_tokenizer", refuse)
    other = write_corpus(tmp_path, paragraphs=120)
    result = long_range_json(
        capsys, str(text_runs / "mag"), "--set", f'task.dataset="{other}"', "--set", "task.val_fraction=0.5",
        "--batches", "1", "--resamples", "10",
    )  # fmt: skip
    assert result["all"]["tokens"] == 4 * 32


def test_the_text_proof_table_holds_the_commands_numbers_against_the_targets(text_runs, capsys, tmp_path):
    """benchmarks/text_proof.py: one row per pair and data source, its numbers those of
    ``eval --long-range --twin`` on the same run, the verdict the targets applied to them."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import text_proof

    mag, swa = text_runs / "mag", text_runs / "swa"
    out, code = tmp_path / "proof.json", tmp_path / "code.py"
    code.write_text("\n".join(f"def function_{i}(value):\n    return value + {i}\n" for i in range(60)))
    assert text_proof.main(["--pair", str(mag), str(swa), "--text", str(code), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["data"] for r in rows] == ["validation", "code.py"]
    assert {"attr", "cattrs", "pluggy"} <= {Path(f).parent.name for f in text_proof.heldout_files()}
    assert (mag / "long_range_heldout.png").exists()
    direct = long_range_json(capsys, str(mag), "--twin", str(swa))
    assert rows[0]["beyond_twin_gain"] == direct["classes"]["beyond"]["gain"]["twin"]
    assert (
        rows[0]["carry_share"]
        == direct["all"]["gain"]["carry"]["mean"] / direct["all"]["loss"]["carried"]["mean"]
    )
    assert table.count("| mag |") == 2 and table.count("| no |") == 2  # four steps carry nothing
