"""Every output contained: nothing written outside ``--out``, no half-written export that passes for
one, every failed write one line, and a parallel ablate's trainers stopped with it.

Cases 6, 7, 10 and 11 of issue 40.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from training_cases import (
    MQAR_RECIPE,
    cli,
    one_line,
    text_workspace,
    train_small_run,
    write_recipe,
)

from miraslab.ablation import load_matrix, run_matrix
from miraslab.cli import main
from miraslab.errors import MiraslabError
from miraslab.recipe.resolve import load_recipe
from miraslab.train.run_lock import RunLock, lock_holder
from miraslab.train.trainer import Trainer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return text_workspace(tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="module")
def small_run(workspace) -> Path:
    return train_small_run(workspace)


def write_matrix(directory: Path, body: str) -> Path:
    (directory / "base.toml").write_text(MQAR_RECIPE)
    path = directory / "grid.toml"
    path.write_text('base = "base.toml"\n' + textwrap.dedent(body))
    return path


# 6. a cell named ".." trained into the parent of --out, one named "." into the matrix root


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[cells.".."]\n"train.steps" = 1\n', "cells.\"..\": the cell id '..' names a directory"),
        ('[cells."."]\n"train.steps" = 1\n', "cells.\".\": the cell id '.' names a directory"),
        ('name = ".."\n', "name: expected a name usable as a directory, got '..'"),
        ('name = "."\n', "name: expected a name usable as a directory, got '.'"),
    ],
    ids=["cell-dotdot", "cell-dot", "name-dotdot", "name-dot"],
)
def test_a_cell_or_matrix_named_dot_or_dotdot_is_refused(tmp_path, body, expected):
    matrix = write_matrix(tmp_path, body)
    with pytest.raises(MiraslabError, match=expected.replace(".", r"\.").replace("'", "'")) as error:
        load_matrix(matrix)
    assert "\n" not in str(error.value)


def test_a_cell_directory_that_links_outside_out_is_not_trained_into(tmp_path):
    matrix = load_matrix(write_matrix(tmp_path, '[set]\n"train.steps" = 1\n'))
    root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / matrix.cells[0].id).symlink_to(elsewhere)
    with pytest.raises(MiraslabError, match=r"cell base: .* resolves to .*elsewhere, outside .*runs"):
        run_matrix(matrix, root, matrix.cells, say=lambda _: None)
    assert not any(elsewhere.iterdir())


# 7. an export on a full disk left DIR with only config.json, which the next export accepted


def test_an_export_that_fails_midway_leaves_nothing_that_looks_like_one(small_run, tmp_path, monkeypatch):
    def full_disk(tokenizer, out, eos_token):
        (out / "tokenizer.json").write_text("{")  # a part of it written, as on a real full disk
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "tokenizer.json"))

    monkeypatch.setattr("miraslab.hf.export._save_tokenizer", full_disk)
    out = tmp_path / "hf"
    with pytest.raises(MiraslabError) as error:
        from miraslab.hf.export import export_run

        export_run(small_run, out)
    assert str(error.value) == (
        f"{out}: the export could not be written (the disk is full); nothing was left in its place; "
        "free some space and export again"
    )
    assert sorted(os.listdir(tmp_path)) == []  # no DIR, no hidden partial sibling


def test_an_export_over_a_previous_one_replaces_it_whole(small_run, tmp_path):
    from miraslab.hf.export import export_run

    out = export_run(small_run, tmp_path / "hf")
    (out / "stale.txt").write_text("from the previous export")
    export_run(small_run, out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_a_directory_with_only_config_json_is_not_taken_for_an_export(small_run, tmp_path, capsys):
    half = tmp_path / "hf"
    half.mkdir()
    (half / "config.json").write_text("{}")
    code, err = cli(capsys, "export", str(small_run), "--hf", str(half))
    assert code == 2
    assert (
        one_line(err) == f"error: {half}: exists and is not an export; choose an empty or new --hf directory"
    )
    assert os.listdir(half) == ["config.json"]


# 10. `unexpected FileExistsError`, `NotADirectoryError`, `FileNotFoundError`, `OSError [Errno 28]`


def test_train_out_an_existing_file_is_one_line(workspace, tmp_path, capsys):
    (tmp_path / "file").write_text("not a run")
    code, err = cli(capsys, "train", str(workspace / "tiny.toml"), "--out", str(tmp_path / "file"), "--quiet")
    assert code == 2
    assert one_line(err) == (
        f"error: {tmp_path / 'file'}: is a file (or lies under one), not a run directory; choose another --out"
    )


def test_export_hf_an_existing_file_is_one_line(small_run, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    code, err = cli(capsys, "export", str(small_run), "--hf", str(tmp_path / "file"))
    assert code == 2
    assert one_line(err) == (
        f"error: {tmp_path / 'file'}: is a file, not a directory; choose an empty or new --hf directory"
    )


def test_a_tensorboard_log_dir_that_cannot_be_created_is_one_line_before_the_run_starts(workspace, tmp_path):
    pytest.importorskip("tensorboard")
    (tmp_path / "file").write_text("in the way")
    log_dir = tmp_path / "file" / "tb"
    recipe = load_recipe(
        write_recipe(
            tmp_path, workspace / "corpus.txt", f'[[monitors]]\nname = "tensorboard"\nlog_dir = "{log_dir}"\n'
        )
    )
    with pytest.raises(MiraslabError) as error:
        Trainer(recipe, tmp_path / "run", show_progress=False, max_steps=1).run()
    assert str(error.value) == (
        f"tensorboard: log_dir: {log_dir}: {tmp_path / 'file'} is a file, not a directory; choose another log_dir"
    )
    assert not (tmp_path / "run" / "recipe.toml").exists()


def test_report_on_a_full_disk_is_one_line(small_run, tmp_path, monkeypatch, capsys):
    import pathlib

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    code, err = cli(capsys, "report", str(small_run), "--out", str(tmp_path / "report"))
    assert code == 2
    assert one_line(err) == (
        f"error: {tmp_path / 'report' / 'summary.md'}: the disk is full, so the report is incomplete; "
        f"free some space or choose another --out, then rerun `miraslab report {small_run}`"
    )


def test_report_on_a_run_directory_named_like_a_matrix_reports_the_run(small_run, tmp_path, capsys):
    run = shutil.copytree(small_run, tmp_path / "run.toml")
    (run / "recipe.toml").unlink()
    code = main(["report", str(run)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert (run / "report" / "summary.md").is_file() and "matrix" not in out.err


# 11. `ablate --jobs 2` with only its parent killed left its trainers running; the rerun failed them


LONG_CELLS = """
[set]
"train.steps" = 100000
"train.eval_every" = 0
"train.checkpoint_every" = 0
[axes]
"train.lr" = [1e-3, 2e-3]
"""


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and signals as on Linux")
def test_a_sigterm_to_a_parallel_ablate_stops_its_trainers_too(tmp_path):
    matrix = write_matrix(tmp_path, LONG_CELLS)
    root = tmp_path / "runs"
    cells = [root / cell.id for cell in load_matrix(matrix).cells]
    env = {**os.environ, "MIRASLAB_CACHE": str(tmp_path / "cache")}
    parent = subprocess.Popen(
        [sys.executable, "-m", "miraslab", "ablate", str(matrix), "--jobs", "2", "--out", str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: all(lock_holder(cell) for cell in cells), 180), "both trainers started"
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=60)
        assert parent.returncode == 128 + signal.SIGTERM, err
        assert "stopped by signal 15, and so were the trainers of its running cells" in err
        assert [lock_holder(cell) for cell in cells] == [None, None]  # the kernel dropped both locks
    finally:
        parent.kill()
        for cell in cells:  # a trainer this test left alive (still holding its lock): ours to stop
            if (holder := lock_holder(cell)) and holder.startswith("pid "):
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(holder.split()[1]), signal.SIGKILL)


def test_a_rerun_names_how_to_stop_a_cell_whose_trainer_is_alive(tmp_path):
    matrix = load_matrix(write_matrix(tmp_path, '[set]\n"train.steps" = 1\n'))
    root = tmp_path / "runs"
    lock = RunLock.acquire(root / "base")  # as a trainer left by a killed ablate holds it
    try:
        (result,) = run_matrix(matrix, root, matrix.cells, say=lambda _: None)
    finally:
        lock.release()
    assert result.status == "running"
    assert result.detail == (
        f"pid {os.getpid()} on {os.uname().nodename} is still training it; rerun with --wait to wait "
        f"for it, or stop it with `kill {os.getpid()}` (it resumes from its last checkpoint)"
    )
    assert json.loads((root / "ablation.json").read_text())[0]["status"] == "running"


def test_a_rerun_with_wait_trains_the_cell_once_its_trainer_ends(tmp_path):
    matrix = load_matrix(write_matrix(tmp_path, '[set]\n"train.steps" = 1\n'))
    root = tmp_path / "runs"
    lock = RunLock.acquire(root / "base")
    said: list[str] = []
    threading.Timer(1.0, lock.release).start()  # the other trainer ends a second later
    (result,) = run_matrix(matrix, root, matrix.cells, wait=True, say=said.append)
    assert any("waiting for pid" in line for line in said)
    assert result.status == "trained"
