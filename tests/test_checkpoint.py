"""Checkpoints: a crash never leaves one that looks valid; a resumed run continues the same curve.

All comparisons are exact (torch.equal, ==): a checkpoint restores bits, not approximations.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from checkpoint_faults import PAUSE_HOOK
from safetensors import safe_open
from torch import nn

from miraslab.errors import MiraslabError
from miraslab.train.checkpoint import (
    CheckpointCorruptedError,
    CheckpointError,
    CheckpointNotFoundError,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    newest_valid_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from miraslab.train.rng_state import capture_rng_state, restore_rng_state
from miraslab.train.state_files import UnstorableStateError

FILES = ["model.safetensors", "optimizer.safetensors", "optimizer.json", "tensors.safetensors", "meta.json"]


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 1))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, steps: int) -> list[float]:
    """Steps that draw from torch (data, dropout), python and numpy RNGs, as a real data pipeline may."""
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 8)
        target = x.sum(1, keepdim=True) * random.uniform(0.5, 1.5) + float(np.random.normal())
        loss = nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def trainer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    seed_all(seed)
    model = small_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
    return model, optimizer, scheduler


def save(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, keep: int = 3) -> Path:
    return save_checkpoint(
        run_dir,
        step,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        tensors={"extra": torch.arange(step + 1)},
        meta={"step": step},
        keep=keep,
    )


def assert_identical(a: Any, b: Any, where: str = "value") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture
def run_with_two_checkpoints(tmp_path: Path) -> Path:
    """A run with step-00000001 and step-00000002 (latest), both with AdamW state."""
    model, optimizer, scheduler = trainer(0)
    for step in (1, 2):
        train(model, optimizer, scheduler, 1)
        save(tmp_path, step, model, optimizer)
    return tmp_path


def rewrite_keeping_manifest_valid(checkpoint: Path, name: str, data: bytes) -> None:
    """Replace a file and update its manifest entry, so only parsing can notice."""
    (checkpoint / name).write_bytes(data)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


# --- round trip --------------------------------------------------------------------------------


def test_round_trip_restores_model_optimizer_tensors_and_meta_exactly(tmp_path: Path) -> None:
    model, optimizer, scheduler = trainer(0)
    train(model, optimizer, scheduler, 2)
    tensors = {
        "scalar": torch.tensor(3.5),
        "bf16": torch.randn(3, 2).to(torch.bfloat16),
        "ints": torch.arange(5, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }
    meta = {
        "stage": "stage1",
        "recipe_hash": "ab12",
        "scheduler": scheduler.state_dict(),
        "data": {"shard": 3, "offset": 1024, "order": (4, 1, 2), 7: "int key", (1, "a"): None},
        "special": [float("inf"), float("nan"), -0.0, 2**70, True],
        "one_key_that_looks_like_a_tag": {"__tuple__": [1]},
    }
    path = save_checkpoint(
        tmp_path,
        2,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        tensors=tensors,
        meta=meta,
        keep=1,
    )

    loaded = load_checkpoint(path)

    assert loaded.step == 2 and loaded.path == path
    assert_identical(dict(model.state_dict()), loaded.model, "model")
    assert_identical(optimizer.state_dict(), loaded.optimizer, "optimizer")
    assert_identical(tensors, loaded.tensors, "tensors")
    assert_identical(meta, loaded.meta, "meta")


def test_on_disk_layout_is_safetensors_and_json_with_a_manifest_of_every_file(tmp_path: Path) -> None:
    model, optimizer, scheduler = trainer(0)
    train(model, optimizer, scheduler, 1)
    path = save(tmp_path, 100, model, optimizer)

    assert path == tmp_path / "checkpoints" / "step-00000100"
    assert sorted(os.listdir(path)) == sorted([*FILES, "manifest.json"])
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-00000100\n"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 100 and sorted(manifest["files"]) == sorted(FILES)
    assert all(entry["size"] == (path / name).stat().st_size for name, entry in manifest["files"].items())
    with safe_open(str(path / "optimizer.safetensors"), "pt") as file:
        assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= set(file.keys())


def test_checkpoint_without_optimizer_loads_with_optimizer_none(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path, 0, model={"w": torch.ones(2)}, optimizer=None, tensors={}, meta={}, keep=1
    )

    assert not (path / "optimizer.safetensors").exists()
    assert load_checkpoint(tmp_path).optimizer is None


def test_load_of_a_run_dir_reads_its_latest_checkpoint(run_with_two_checkpoints: Path) -> None:
    assert load_checkpoint(run_with_two_checkpoints).step == 2
    assert latest_checkpoint(run_with_two_checkpoints) == checkpoint_dir(run_with_two_checkpoints, 2)


# --- resume continues the same curve -----------------------------------------------------------


def test_resumed_adamw_run_continues_bitwise_identically(tmp_path: Path) -> None:
    model, optimizer, scheduler = trainer(0)
    straight_losses = train(model, optimizer, scheduler, 10)

    first, first_optimizer, first_scheduler = trainer(0)
    losses = train(first, first_optimizer, first_scheduler, 5)
    rng_tensors, rng_meta = capture_rng_state()
    save_checkpoint(
        tmp_path,
        5,
        model=first.state_dict(),
        optimizer=first_optimizer.state_dict(),
        tensors=rng_tensors,
        meta={**rng_meta, "scheduler": first_scheduler.state_dict()},
        keep=1,
    )
    resumed, resumed_optimizer, resumed_scheduler = trainer(123)  # other weights, other RNG state
    checkpoint = load_checkpoint(tmp_path)
    resumed.load_state_dict(checkpoint.model)
    resumed_optimizer.load_state_dict(checkpoint.optimizer)
    resumed_scheduler.load_state_dict(checkpoint.meta["scheduler"])
    restore_rng_state(checkpoint)
    losses += train(resumed, resumed_optimizer, resumed_scheduler, 5)

    assert losses == straight_losses
    assert_identical(dict(model.state_dict()), dict(resumed.state_dict()), "model")
    assert_identical(optimizer.state_dict(), resumed_optimizer.state_dict(), "optimizer")


def test_restored_rng_state_repeats_torch_python_and_numpy_draws(tmp_path: Path) -> None:
    seed_all(7)
    rng_tensors, rng_meta = capture_rng_state()
    expected = (torch.rand(4), random.random(), np.random.rand(3), np.random.normal())
    save_checkpoint(tmp_path, 1, model={}, optimizer=None, tensors=rng_tensors, meta=rng_meta, keep=1)

    seed_all(8)
    restore_rng_state(load_checkpoint(tmp_path))
    drawn = (torch.rand(4), random.random(), np.random.rand(3), np.random.normal())

    assert torch.equal(drawn[0], expected[0]) and drawn[1] == expected[1]
    assert np.array_equal(drawn[2], expected[2]) and drawn[3] == expected[3]


def test_restoring_rng_from_a_checkpoint_without_it_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, model={}, optimizer=None, tensors={}, meta={}, keep=1)

    with pytest.raises(CheckpointError, match="holds no RNG state"):
        restore_rng_state(load_checkpoint(tmp_path))


# --- tensors safetensors cannot take as they are ------------------------------------------------


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_are_stored_once_and_load_into_a_tied_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    path = save_checkpoint(tmp_path, 1, model=model.state_dict(), optimizer=None, tensors={}, meta={}, keep=1)
    torch.manual_seed(1)
    fresh = TiedLM()

    checkpoint = load_checkpoint(path)
    fresh.load_state_dict(checkpoint.model)  # strict: both keys present

    with safe_open(str(path / "model.safetensors"), "pt") as file:
        assert list(file.keys()) == ["embed.weight"]
    assert list(checkpoint.model) == ["embed.weight", "head.weight"]
    assert checkpoint.model["head.weight"] is checkpoint.model["embed.weight"]
    assert torch.equal(fresh.embed.weight, model.embed.weight) and fresh.head.weight is fresh.embed.weight


def test_tensors_that_share_memory_or_are_not_contiguous_round_trip(tmp_path: Path) -> None:
    base = torch.arange(24.0).reshape(4, 6)
    tensors = {"base": base, "rows": base[1:3], "transposed": base.t(), "column": base[:, 2]}
    save_checkpoint(tmp_path, 1, model={}, optimizer=None, tensors=tensors, meta={}, keep=1)

    loaded = load_checkpoint(tmp_path).tensors

    assert_identical(tensors, loaded)


# --- keep-last-N, re-saving, what save refuses -------------------------------------------------


def test_only_the_last_keep_checkpoints_remain(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(
            tmp_path, step, model={"w": torch.full((2,), step)}, optimizer=None, tensors={}, meta={}, keep=2
        )

    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-00000004", "step-00000005"]


def test_keep_counts_the_saved_checkpoint_even_when_higher_steps_exist(tmp_path: Path) -> None:
    """A run resumed from step 10 saves step 15 while 20 and 30 exist: 15 is latest and stays."""
    for step in (10, 20, 30, 15):
        save_checkpoint(
            tmp_path, step, model={"w": torch.ones(1)}, optimizer=None, tensors={}, meta={}, keep=2
        )

    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-00000015", "step-00000030"]
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 15)


def test_saving_an_existing_step_again_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(
        tmp_path, 5, model={"w": torch.zeros(3)}, optimizer=None, tensors={}, meta={"n": 1}, keep=3
    )
    save_checkpoint(
        tmp_path, 5, model={"w": torch.ones(3)}, optimizer=None, tensors={}, meta={"n": 2}, keep=3
    )

    checkpoint = load_checkpoint(tmp_path)

    assert torch.equal(checkpoint.model["w"], torch.ones(3)) and checkpoint.meta == {"n": 2}
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-00000005"]


def test_a_value_json_cannot_hold_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(MiraslabError, match=r"checkpoint meta at data\.seen is a set"):  # CLI prints it
        save_checkpoint(
            tmp_path, 1, model={}, optimizer=None, tensors={}, meta={"data": {"seen": {1}}}, keep=1
        )
    assert not (tmp_path / "checkpoints").exists()


def test_a_failed_save_removes_its_temp_dir_and_keeps_latest(run_with_two_checkpoints: Path) -> None:
    with pytest.raises(UnstorableStateError, match=r"model\['head'\] is a str, not a tensor"):
        save_checkpoint(
            run_with_two_checkpoints, 3, model={"head": "oops"}, optimizer=None, tensors={}, meta={}, keep=3
        )

    assert sorted(os.listdir(run_with_two_checkpoints / "checkpoints")) == [
        "latest",
        "step-00000001",
        "step-00000002",
    ]
    assert load_checkpoint(run_with_two_checkpoints).step == 2


# --- what load refuses --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_a_flipped_byte_is_refused_with_the_path_the_file_and_where_to_resume(
    run_with_two_checkpoints: Path, name: str
) -> None:
    step1, step2 = checkpoint_dir(run_with_two_checkpoints, 1), checkpoint_dir(run_with_two_checkpoints, 2)
    data = bytearray((step2 / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (step2 / name).write_bytes(data)

    with pytest.raises(CheckpointCorruptedError) as refused:
        load_checkpoint(run_with_two_checkpoints)

    assert str(refused.value) == (
        f"{step2}: {name} is corrupted (sha256 does not match the manifest); "
        f"valid checkpoints: step-00000001; resume from step-00000001 with --resume-from {step1}"
    )


def test_a_truncated_file_is_refused(run_with_two_checkpoints: Path) -> None:
    model_file = checkpoint_dir(run_with_two_checkpoints, 2) / "model.safetensors"
    size = model_file.stat().st_size
    with open(model_file, "r+b") as file:
        file.truncate(size // 2)

    with pytest.raises(
        CheckpointCorruptedError, match=rf"model\.safetensors is truncated or corrupted \({size // 2} bytes"
    ):
        load_checkpoint(run_with_two_checkpoints)


@pytest.mark.parametrize("name", FILES)
def test_a_missing_file_is_refused(run_with_two_checkpoints: Path, name: str) -> None:
    (checkpoint_dir(run_with_two_checkpoints, 2) / name).unlink()

    with pytest.raises(
        CheckpointCorruptedError, match=rf"step-00000002: {name} is missing; valid checkpoints"
    ):
        load_checkpoint(run_with_two_checkpoints)


def test_a_directory_without_manifest_is_refused_as_unfinished(run_with_two_checkpoints: Path) -> None:
    (checkpoint_dir(run_with_two_checkpoints, 2) / "manifest.json").unlink()

    with pytest.raises(
        CheckpointCorruptedError, match=r"manifest\.json is missing, so writing it never finished"
    ):
        load_checkpoint(run_with_two_checkpoints)


def test_a_pickle_in_place_of_safetensors_is_refused_without_running_it(
    run_with_two_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    marker = tmp_path_factory.mktemp("pickle") / "executed"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    step2 = checkpoint_dir(run_with_two_checkpoints, 2)
    rewrite_keeping_manifest_valid(step2, "model.safetensors", pickle.dumps({"w": Payload()}))

    with pytest.raises(
        CheckpointCorruptedError, match=r"model\.safetensors is not a readable safetensors file"
    ):
        load_checkpoint(step2)
    assert not marker.exists()


def test_a_latest_pointing_to_a_missing_directory_is_refused_listing_valid_checkpoints(
    run_with_two_checkpoints: Path,
) -> None:
    root = run_with_two_checkpoints / "checkpoints"
    os.rename(root / "step-00000002", run_with_two_checkpoints / "moved-away")

    with pytest.raises(CheckpointNotFoundError) as refused:
        load_checkpoint(run_with_two_checkpoints)

    assert str(refused.value) == (
        f"{root / 'latest'}: points to step-00000002, which does not exist; "
        f"valid checkpoints: step-00000001; resume from step-00000001 with --resume-from {root / 'step-00000001'}"
    )


def test_a_run_without_checkpoints_is_refused(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()

    assert latest_checkpoint(tmp_path) is None
    assert newest_valid_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointNotFoundError, match="the run has no committed checkpoint"):
        load_checkpoint(tmp_path)


def test_newest_valid_checkpoint_skips_a_corrupted_latest(run_with_two_checkpoints: Path) -> None:
    assert newest_valid_checkpoint(run_with_two_checkpoints) == checkpoint_dir(run_with_two_checkpoints, 2)
    (checkpoint_dir(run_with_two_checkpoints, 2) / "meta.json").write_text("{}")

    assert newest_valid_checkpoint(run_with_two_checkpoints) == checkpoint_dir(run_with_two_checkpoints, 1)


# --- crashes ------------------------------------------------------------------------------------

SAVER = (
    PAUSE_HOOK
    + """
import torch
from miraslab.train.checkpoint import save_checkpoint

run_dir, pause_after = sys.argv[1], sys.argv[2]
save_checkpoint(run_dir, 1, model={"w": torch.ones(4)}, optimizer=None, tensors={}, meta={"n": 1}, keep=3)
pause_at(pause_after)
big = {"w": torch.ones(1 << 20), "b": torch.ones(1 << 20)}
save_checkpoint(run_dir, 2, model=big, optimizer=None, tensors={}, meta={"n": 2}, keep=3)
"""
)


def kill_while_saving(run_dir: Path, pause_after: str) -> int:
    """Run a process that saves step 1, then SIGKILL it inside the save of step 2; return its pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(run_dir), pause_after], stderr=subprocess.PIPE, text=True
    )
    try:
        line = child.stderr.readline()  # type: ignore[union-attr]
        assert line == f"checkpoint paused after {pause_after}\n", line + child.stderr.read()  # type: ignore[union-attr]
    finally:
        child.kill()
        child.wait()  # reaped: a zombie would still count as a live writer
    return child.pid


def test_sigkill_while_writing_leaves_the_previous_checkpoint_latest_and_loadable(tmp_path: Path) -> None:
    kill_while_saving(tmp_path, "model.safetensors")

    checkpoint = load_checkpoint(tmp_path)

    assert checkpoint.step == 1 and checkpoint.meta == {"n": 1}


def test_sigkill_while_writing_leaves_no_directory_that_looks_valid(tmp_path: Path) -> None:
    pid = kill_while_saving(tmp_path, "model.safetensors")
    root = tmp_path / "checkpoints"

    assert sorted(os.listdir(root)) == sorted(["latest", f".tmp-step-00000002-{pid}", "step-00000001"])
    with pytest.raises(CheckpointCorruptedError, match=r"manifest\.json is missing"):
        verify_checkpoint(root / f".tmp-step-00000002-{pid}")
    assert newest_valid_checkpoint(tmp_path) == root / "step-00000001"


def test_sigkill_after_rename_before_latest_keeps_the_previous_checkpoint_latest(tmp_path: Path) -> None:
    kill_while_saving(tmp_path, "renamed")

    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 1)
    verify_checkpoint(checkpoint_dir(tmp_path, 2))  # complete, just not committed


def test_temp_dirs_of_dead_processes_are_removed_on_the_next_save(tmp_path: Path) -> None:
    pid = kill_while_saving(tmp_path, "model.safetensors")

    save_checkpoint(tmp_path, 2, model={"w": torch.ones(1)}, optimizer=None, tensors={}, meta={}, keep=3)

    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-00000001", "step-00000002"]
    assert not (tmp_path / "checkpoints" / f".tmp-step-00000002-{pid}").exists()


def test_temp_dir_of_a_live_process_is_left_alone(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        in_progress = tmp_path / "checkpoints" / f".tmp-step-00000009-{sleeper.pid}"
        in_progress.mkdir(parents=True)

        save_checkpoint(tmp_path, 1, model={"w": torch.ones(1)}, optimizer=None, tensors={}, meta={}, keep=1)

        assert in_progress.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
