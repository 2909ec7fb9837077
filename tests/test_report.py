"""``miraslab report RUN``: PNG plots and summary.md, whose first sentence says whether the memory is used."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from conftest import REPO
from safetensors.torch import save_file
from training_cases import SHORT_PROOF

import miraslab
from miraslab.cli import main
from miraslab.report import build_report
from miraslab.report.initial_weights import init_history, spectrum_stats
from miraslab.report.run_metrics import read_metrics
from miraslab.report.summary import verdict
from miraslab.train.checkpoint import save_checkpoint
from miraslab.train.trainer import Trainer

KEY = "blocks.0.memory.memory.rule.arch.init.w"  # layer 0's memory's W_init, as LanguageModel names it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("loss.png", "gates.png", "memory_norms.png", "memory_use.png", "w_init.png")
WITH_STATS = (
    f'extends = "{REPO / "recipes" / "mqar" / "delta-proof.toml"}"\n[[monitors]]\nname = "memory_stats"\n'
)


def train(directory, sets: list[str]):
    (directory / "recipe.toml").write_text(WITH_STATS)
    Trainer(
        miraslab.load_recipe(directory / "recipe.toml", sets), directory / "run", show_progress=False
    ).run()
    return directory / "run"


@pytest.fixture(scope="module")
def used_run(tmp_path_factory):
    """45 steps of the delta-rule proof: a reset costs 2.3 nats and 7.8 accuracy points (at 30
    steps 5.1, too near the 5-point rule); checkpoints at 15, 30, 45."""
    sets = [*SHORT_PROOF, "train.steps=45", "train.eval_every=45", "train.checkpoint_every=15"]
    return train(tmp_path_factory.mktemp("used"), sets)


@pytest.fixture(scope="module")
def unused_run(tmp_path_factory):
    """One chunk covers each sequence: resetting at every chunk takes nothing away (gain exactly 0)."""
    sets = [*SHORT_PROOF, "model.memory.chunk_size=64", "train.steps=4", "train.eval_every=2"]
    return train(tmp_path_factory.mktemp("unused"), sets)


@pytest.fixture(scope="module")
def used_report(used_run):
    """``miraslab report RUN`` once: (the default --out, what it printed)."""
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        assert main(["report", str(used_run)]) == 0
    return used_run / "report", capture.getvalue()


def test_every_plot_is_a_png_matplotlib_reads_back(used_report):
    import matplotlib.image

    out, printed = used_report
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
        assert image.std() > 0.01, f"{name} is blank"
    assert f"wrote {', '.join(PLOTS)}, summary.md to {out}" in printed


def test_a_memory_that_carries_recall_is_reported_used_with_its_gain(used_run, used_report):
    last = [json.loads(line) for line in (used_run / "metrics.jsonl").read_text().splitlines()][-1]
    gain = last["memory_use/carry_gain"]
    assert gain > 1.0
    first = (used_report[0] / "summary.md").read_text().splitlines()[2]
    assert first.startswith("**The memory is used**") and f"{gain:+.4f} nats" in first
    assert f"{last['memory_use/carry_gain_share']:+.2%}" in first
    assert used_report[1].startswith("The memory is used: at step 45")


def test_a_memory_with_nothing_carried_is_reported_not_used(unused_run, tmp_path, capsys):
    assert main(["report", str(unused_run), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("The memory is not used: at step 4") and "+0.0000 nats" in printed
    assert "**The memory is not used**" in (tmp_path / "r" / "summary.md").read_text()


def metrics_of(tmp_path, **last: float):
    record = {"step": 8, "event": "eval", "val_loss": 2.0, "memory_use/read_gain": 0.5, **last}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return read_metrics(tmp_path / "metrics.jsonl")


def test_the_verdict_is_the_trainers_accuracy_points_on_answers_else_share_of_the_loss(tmp_path):
    """5 accuracy points lost to a reset on a task with answers; else 1 % of the loss (memory_use)."""
    share = {"memory_use/carry_gain": 0.1, "memory_use/carry_gain_share": 0.05}  # 5 % of the loss
    used, sentence = verdict(metrics_of(tmp_path, **share))
    assert (
        used == "used"
        and "+0.1000 nats (+5.00% of 2.0000)" in sentence
        and "at least 1% of the loss" in sentence
    )
    assert verdict(metrics_of(tmp_path, **{**share, "memory_use/carry_gain_share": 0.009}))[0] == "not used"
    answers = {
        **share,
        "val_accuracy": 0.6,
        "memory_use/reset_accuracy": 0.57,
        "memory_use/zero_accuracy": 0.1,
    }
    used, sentence = verdict(metrics_of(tmp_path, **answers))  # 5 % of the loss but only 3 points
    assert (
        used == "not used"
        and "the accuracy from 60.0% to 57.0%" in sentence
        and "5 accuracy points" in sentence
    )
    answers["memory_use/reset_accuracy"] = 0.1
    assert verdict(metrics_of(tmp_path, **answers))[0] == "used"


def test_a_run_without_the_memory_use_metric_is_unknown_not_used(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "loss": 3.0})
        + "\n"
        + json.dumps({"step": 1, "event": "eval", "val_loss": 2.9})
        + "\n"
    )
    report = build_report(run)
    assert report.verdict == "unknown" and "is not known" in report.sentence
    assert report.plots["loss"] is not None and report.plots["memory use"] is None
    assert "- memory use: nothing logged to plot" in report.summary.read_text()


def test_the_gate_and_w_init_tables_hold_every_logged_gate_and_checkpoint(used_report):
    summary = (used_report[0] / "summary.md").read_text()
    assert "| L0 | memory/lr_mean |" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| L0/memory/w |")]
    assert [row.split("|")[2].strip() for row in rows] == ["15", "30", "45"]
    assert rows[0].split("|")[6].strip() == "—" and rows[1].split("|")[6].strip().endswith("%")


def write_checkpoint(run, step: int, w: torch.Tensor) -> None:
    model = {KEY: w, "head.weight": torch.ones(2, 2)}
    save_checkpoint(run, step, model=model, optimizer=None, tensors={}, meta={}, keep=10)


def test_w_init_statistics_follow_their_definitions(tmp_path):
    """Per head: effective rank exp(H(σ / Σσ)), top-1 share σ₁ / Σσ; change ‖ΔW‖ / ‖W_prev‖."""
    identity = torch.eye(4).expand(2, 4, 4).clone()  # σ = 1, 1, 1, 1: rank 4, top-1 share 1/4
    rank_one = torch.zeros(2, 4, 4)
    rank_one[:, 0, 0] = 3.0  # σ = 3, 0, 0, 0: rank 1, top-1 share 1
    assert spectrum_stats(identity) == pytest.approx((4.0, 0.25))
    assert spectrum_stats(rank_one) == pytest.approx((1.0, 1.0))
    assert spectrum_stats(torch.zeros(2, 4, 4)) == (None, None)  # a zero W_init has no spectrum
    assert spectrum_stats(torch.ones(2, 4, 1)) == (None, None)  # a map's bias: a vector, not rank 1

    write_checkpoint(tmp_path, 1, identity)
    write_checkpoint(tmp_path, 2, 3 * identity)
    write_checkpoint(tmp_path, 3, 3 * identity)
    # a readable safetensors file that is not the one the manifest sealed: only verifying catches it
    save_file({KEY: torch.zeros(2, 4, 4)}, tmp_path / "checkpoints" / "step-00000003" / "model.safetensors")
    history = init_history(tmp_path)
    assert [(s.memory, s.step) for s in history.stats] == [("L0/memory/w", 1), ("L0/memory/w", 2)]
    first, second = history.stats
    assert first.norm == pytest.approx(float(identity.norm())) and first.relative_change is None
    assert second.relative_change == pytest.approx(2.0)  # ‖3I − I‖ / ‖I‖
    assert second.effective_rank == pytest.approx(4.0) and second.top1_share == pytest.approx(0.25)
    assert len(history.skipped) == 1 and history.skipped[0].startswith("step-00000003:")


def test_a_missing_matrix_file_is_a_one_line_error(tmp_path, capsys):
    # a .toml argument is an ablation matrix (tests/test_ablation_run.py reports one)
    assert main(["report", str(tmp_path / "matrix.toml")]) == 2
    err = capsys.readouterr().err
    assert "matrix.toml: no such matrix file" in err and err.count("\n") == 1


def test_a_directory_without_metrics_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl here" in capsys.readouterr().err
