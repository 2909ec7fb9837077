"""Nothing lost, nothing bad accepted: divergence, resume checks, the run lock, metrics.jsonl.

Each test is a case of issue 20 that failed before the fix. The runs are the tiny recipe of
training_cases (a few seconds each on one CPU core).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from training_cases import write_corpus, write_recipe

from miraslab.errors import MiraslabError
from miraslab.recipe.resolve import load_recipe
from miraslab.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from miraslab.train.run_dir import RunDir
from miraslab.train.run_lock import RunLock
from miraslab.train.state_files import read_tensors, write_tensors
from miraslab.train.trainer import Trainer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("reliability")
    os.environ["MIRASLAB_CACHE"] = str(directory / "cache")
    write_corpus(directory)
    return directory


def train(workspace: Path, out: Path, sets=(), **options) -> dict:
    recipe = load_recipe(write_recipe(workspace, workspace / "corpus.txt"), ["train.eval_every=0", *sets])
    return Trainer(recipe, out, show_progress=False, **options).run()


def resume(out: Path, **options) -> dict:
    return Trainer(RunDir(out).load_recipe(), out, resume=True, show_progress=False, **options).run()


@pytest.fixture(scope="module")
def finished_run(workspace) -> Path:
    """12 steps, checkpoints every 2 (keep 3): step-8, step-10, step-12."""
    out = workspace / "finished"
    train(workspace, out, ["train.checkpoint_every=2"])
    return out


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def steps_on_disk(run: Path) -> list[str]:
    return sorted(d.name for d in (run / "checkpoints").iterdir() if d.name.startswith("step-"))


def rewrite_keeping_manifest_valid(checkpoint: Path, name: str, data: bytes) -> None:
    """Replace a file and its manifest entry, so only what the file holds can be noticed."""
    (checkpoint / name).write_bytes(data)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def edit_meta(checkpoint: Path, edit) -> None:
    meta = json.loads((checkpoint / "meta.json").read_text())
    edit(meta)
    rewrite_keeping_manifest_valid(checkpoint, "meta.json", json.dumps(meta).encode())


# --- 1. checkpoints only from finite states -----------------------------------------------------


def test_a_nonfinite_gradient_norm_stops_the_run_and_every_kept_checkpoint_is_finite(workspace, tmp_path):
    # lr=1e4: step 2 has a finite loss and a NaN gradient norm (the bug saved that step's NaN weights)
    with pytest.raises(MiraslabError, match="gradient norm is nan at step 2") as error:
        train(workspace, tmp_path / "run", ["train.lr=1e4", "train.checkpoint_every=1"])
    named = tmp_path / "run" / "checkpoints" / "step-00000001"
    assert f"the last good checkpoint is {named}" in str(error.value)
    assert latest_checkpoint(tmp_path / "run") == named
    assert steps_on_disk(tmp_path / "run") == ["step-00000001"]
    model = load_checkpoint(tmp_path / "run").model
    assert all(bool(torch.isfinite(tensor).all()) for tensor in model.values())


def test_nonfinite_parameters_are_never_saved(workspace, tmp_path, monkeypatch):
    original = Trainer._optimizer_step

    def poisoned(self, *args):  # finite loss and gradient norm, but the update made a weight inf
        metrics = original(self, *args)
        if self.step == 2:
            next(self.raw.parameters()).data[0] = math.inf
        return metrics

    monkeypatch.setattr(Trainer, "_optimizer_step", poisoned)
    with pytest.raises(MiraslabError, match="parameters hold non-finite values at step 2"):
        train(workspace, tmp_path / "run", ["train.checkpoint_every=1"])
    assert steps_on_disk(tmp_path / "run") == ["step-00000001"]


def test_a_run_that_diverges_before_its_first_checkpoint_says_none_was_written(workspace, tmp_path):
    with pytest.raises(MiraslabError) as error:
        train(workspace, tmp_path / "run", ["train.lr=1e4"])  # NaN by step 2, before step 6's checkpoint
    message = str(error.value)
    assert "no checkpoint was written" in message
    assert f"miraslab train --resume {tmp_path / 'run'}" in message
    assert "checkpoints" not in message.replace("no checkpoint", "")  # names no folder that does not exist


# --- 4. a run stopped before its first checkpoint is restartable --------------------------------


def test_resume_on_a_run_without_a_checkpoint_starts_it_again_from_step_0(workspace, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(MiraslabError, match="no checkpoint was written"):
        train(workspace, out, ["train.lr=1e4"])
    recipe = out / "recipe.toml"
    text = recipe.read_text()
    assert re.search(r"^lr = 10000\.0$", text, flags=re.M)
    recipe.write_text(re.sub(r"^lr = 10000\.0$", "lr = 0.003", text, flags=re.M))
    summary = resume(out)
    assert summary["step"] == 12
    steps = [m["step"] for m in RunDir(out).metrics() if "loss" in m]
    assert steps == list(range(1, 13))  # the diverged attempt's lines are gone


# --- 3. resume checks the recipe, the writers and the tensors ------------------------------------


def test_a_changed_recipe_key_is_refused_on_resume_naming_it(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    recipe = out / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("lr = 0.003", "lr = 0.01"))
    with pytest.raises(MiraslabError) as error:
        resume(out, max_steps=13)
    message = str(error.value)
    assert "train.lr (0.003 -> 0.01)" in message and "--init-from" in message
    assert "\n" not in message


def test_a_key_safe_to_change_is_accepted_on_resume(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    recipe = out / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("log_every = 1", "log_every = 5"))
    recipe.write_text(recipe.read_text().replace("steps = 12", "steps = 14"))
    with pytest.raises(MiraslabError, match=r"train\.steps \(12 -> 14\)"):  # the schedule depends on it
        resume(out)
    recipe.write_text(recipe.read_text().replace("steps = 14", "steps = 12"))
    assert resume(out, resume_from=out / "checkpoints" / "step-00000010")["step"] == 12


def test_a_key_added_to_the_schema_since_the_checkpoint_is_not_a_change(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    edit_meta(out / "checkpoints" / "step-00000010", lambda meta: meta["recipe"]["train"].pop("min_lr_ratio"))
    assert resume(out, resume_from=out / "checkpoints" / "step-00000010")["step"] == 12


def test_a_checkpoint_from_before_recorded_recipes_resumes_with_a_warning(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")

    def legacy(meta):
        del meta["recipe"]
        meta["recipe_sha256"] = "0" * 64

    edit_meta(out / "checkpoints" / "step-00000010", legacy)
    Trainer(RunDir(out).load_recipe(), out, resume_from=out / "checkpoints" / "step-00000010").run()
    assert "the keys cannot be named" in capsys.readouterr().err


def test_a_second_process_in_the_same_run_directory_is_refused_naming_the_holder(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    lock = RunLock.acquire(out)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "miraslab", "train", "--resume", str(out), "--quiet"],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    finally:
        lock.release()
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"another process (pid {os.getpid()} " in result.stderr


def test_a_checkpoint_missing_a_model_tensor_is_refused(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    checkpoint = out / "checkpoints" / "step-00000012"
    tensors = read_tensors(checkpoint / "model.safetensors")
    dropped = next(name for name in tensors if "norm" in name)
    del tensors[dropped]
    write_tensors(tmp_path / "model.safetensors", tensors, what="model")
    rewrite_keeping_manifest_valid(
        checkpoint, "model.safetensors", (tmp_path / "model.safetensors").read_bytes()
    )
    with pytest.raises(MiraslabError, match=f"lacks 1 of the model's tensors \\({dropped}\\)"):
        resume(out, resume_from=checkpoint)


def test_resume_from_an_earlier_checkpoint_drops_the_abandoned_timeline(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    recipe = out / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("keep_checkpoints = 3", "keep_checkpoints = 2"))
    assert steps_on_disk(out) == ["step-00000008", "step-00000010", "step-00000012"]
    Trainer(
        RunDir(out).load_recipe(),
        out,
        resume_from=out / "checkpoints" / "step-00000008",
        max_steps=10,
        show_progress=True,
    ).run()
    # keep 2: the new step 10 and the step resumed from; the abandoned step 12 is gone
    assert steps_on_disk(out) == ["step-00000008", "step-00000010"]
    assert (
        "removed the later checkpoints of the abandoned run, step-00000010, step-00000012"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda meta: meta.pop("tokens"), "meta.json holds no integer 'tokens'"),
        (lambda meta: meta["data"].pop("split"), "data state lacks split"),
        (lambda meta: meta.update({"rng.python": [3, [1, 2], None]}), "RNG state that cannot be restored"),
    ],
    ids=["no-tokens", "no-split", "bad-rng"],
)
def test_a_checkpoint_with_a_damaged_state_is_refused_in_one_line(finished_run, tmp_path, edit, expected):
    out = copy_run(finished_run, tmp_path / "run")
    edit_meta(out / "checkpoints" / "step-00000012", edit)
    with pytest.raises(MiraslabError, match=expected) as error:
        resume(out, max_steps=12)
    assert "\n" not in str(error.value)


def test_a_full_disk_while_writing_a_checkpoint_says_so_and_keeps_the_last_good_one(
    workspace, tmp_path, monkeypatch
):
    from safetensors import SafetensorError

    import miraslab.train.checkpoint as checkpoint_module

    original = checkpoint_module.write_tensors

    def full_after_step_6(path, tensors, *, what):
        if "step-00000012" in str(path.parent):
            raise SafetensorError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'
            )
        return original(path, tensors, what=what)

    monkeypatch.setattr(checkpoint_module, "write_tensors", full_after_step_6)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as error:
        train(workspace, out, ["train.checkpoint_every=6"])
    message = str(error.value)
    assert "the disk is full" in message and "step-00000006 is kept" in message
    assert latest_checkpoint(out).name == "step-00000006"
    assert [d.name for d in (out / "checkpoints").iterdir() if d.name.startswith(".tmp")] == []


def test_a_full_disk_while_logging_says_so(tmp_path, monkeypatch):
    run = RunDir(tmp_path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(MiraslabError, match=r"metrics\.jsonl: cannot append a line: the disk is full"):
        run.log({"step": 1, "loss": 1.0})


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(workspace, finished_run, tmp_path):
    train(workspace, tmp_path / "fresh", max_steps=1)
    train(workspace, tmp_path / "warm", max_steps=1, init_from=finished_run / "checkpoints" / "step-00000012")
    fresh, warm = (
        [m["loss"] for m in RunDir(tmp_path / name).metrics() if "loss" in m] for name in ("fresh", "warm")
    )
    assert warm[0] < fresh[0] - 0.3  # trained weights: a lower loss at the first step


# --- 2. metrics.jsonl survives any kill ----------------------------------------------------------

KILL_DURING_REWRITE = textwrap.dedent("""
    import builtins, io, os, signal, sys
    from miraslab.train.run_dir import RunDir

    real_open = io.open

    class KilledMidWrite:  # a file whose first write lands halfway, then the process is killed
        def __init__(self, handle):
            self.handle = handle
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False
        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        writelines = lambda self, lines: self.write("".join(lines))
        def __getattr__(self, name):
            return getattr(self.handle, name)

    def killing_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return KilledMidWrite(handle) if "w" in mode else handle

    builtins.open = io.open = killing_open
    RunDir(sys.argv[1]).truncate_metrics(int(sys.argv[2]))
""")


def test_a_kill_while_metrics_are_rewritten_for_a_resume_leaves_the_old_file(tmp_path):
    run = RunDir(tmp_path)
    for step in range(1, 201):
        run.log({"step": step, "loss": 1.0 / step})
    before = run.metrics_path.read_bytes()
    result = subprocess.run([sys.executable, "-c", KILL_DURING_REWRITE, str(tmp_path), "100"])
    assert result.returncode == -signal.SIGKILL
    assert run.metrics_path.read_bytes() == before  # the old code left it cut in half
    run.truncate_metrics(100)
    assert [m["step"] for m in run.metrics()] == list(range(1, 101))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # the killed temp file is gone


def test_a_torn_last_line_is_dropped_with_a_warning_and_the_run_resumes(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 13, "loss": 4.1')  # a full disk or a kill mid-line
    assert [m["step"] for m in RunDir(out).metrics()][-1] == 12
    assert "dropped its torn last line" in capsys.readouterr().err
    assert resume(out, resume_from=out / "checkpoints" / "step-00000010")["step"] == 12
    assert [m["step"] for m in RunDir(out).metrics() if "loss" in m] == list(range(1, 13))


def test_a_bad_line_before_the_last_is_one_line_naming_it(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(MiraslabError, match=r"metrics\.jsonl: line 2 is not a JSON object"):
        RunDir(tmp_path).metrics()
