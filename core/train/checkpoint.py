"""Checkpoints of a training run: a crash never leaves one that looks valid; resume continues the curve.

On disk (no pickle anywhere; loading reads only safetensors and JSON)::

    run_dir/checkpoints/
        latest                     the committed checkpoint's directory name, e.g. "step-00000200"
        step-00000200/
            model.safetensors      model state_dict (tied weights stored once, see state_files)
            optimizer.safetensors  optimizer tensors, keyed state.<param_index>.<name>
            optimizer.json         the rest of the optimizer state_dict (param_groups, scalars)
            tensors.safetensors    other tensors (RNG states, ...)
            meta.json              scheduler, data-iterator state, stage, recipe hash, python RNG ...
            manifest.json          format, step, and size + sha256 of every file; written last

The optimizer files are absent when the checkpoint was saved with ``optimizer=None``.
``rng_state.capture_rng_state`` gives the RNG entries for ``tensors`` and ``meta``.

Writing: all files go into ``checkpoints/.tmp-step-00000200-<pid>``, each fsync'd, then the
manifest, then the directory is fsync'd and renamed to ``step-00000200`` (a directory of that name
is therefore always complete), ``checkpoints/`` is fsync'd, and ``latest`` is replaced atomically.
Only then are checkpoints beyond ``keep`` removed (the one ``latest`` names counts as one of the
``keep`` and is never removed) together with ``.tmp-*`` directories left by dead processes. A
removed directory is first renamed to ``.tmp-*`` so that a crash mid-removal leaves nothing that
looks like a checkpoint. Re-saving an existing step moves the old directory aside, renames the new
one in, and then removes the old one; a crash between those two renames leaves that step missing,
which loading reports as below.

Reading: ``latest`` is the commit point. ``load_checkpoint`` verifies every file against the
manifest (presence, size, sha256) and parses it; any problem raises a ``CheckpointError``
subclass whose message names the path and what is wrong.

Corrupted or missing latest, the policy: ``load_checkpoint(run_dir)`` never silently falls back.
It refuses, and its message lists the checkpoints of the run that do verify and the
``--resume-from`` path of the newest one (finding them hashes their files, on this error path
only). A caller that prefers to continue, e.g. the trainer under an explicit option, calls
``newest_valid_checkpoint(run_dir)``: ``latest`` if it verifies, else the highest step that does.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from ..bounded_read import MAX_POINTER_BYTES, FileRefused, read_bounded_text
from ..errors import MiraslabError
from .state_files import (
    decode_state,
    encode_state,
    file_digest,
    fsync_dir,
    read_tensors,
    seal_file,
    write_json,
    write_tensors,
)

FORMAT, VERSION = "miraslab.checkpoint", 1
CHECKPOINTS, LATEST = "checkpoints", "latest"
MODEL, OPTIMIZER_TENSORS, OPTIMIZER_JSON = "model.safetensors", "optimizer.safetensors", "optimizer.json"
TENSORS, META, MANIFEST = "tensors.safetensors", "meta.json", "manifest.json"
_REQUIRED, _OPTIMIZER = {MODEL, TENSORS, META}, {OPTIMIZER_TENSORS, OPTIMIZER_JSON}
_STEP_DIR = re.compile(r"step-(\d+)")
_TMP_OWNER = re.compile(r"\.tmp-.*-(\d+)")
# A fault hook, None outside tests: called with (file name, step) after each file of a save is
# sealed and with ("renamed", step) after the rename, so a test can stop a save at that point
# and SIGKILL it there (tests/checkpoint_faults.py installs one).
fault_hook: Callable[[str, int], None] | None = None


class CheckpointError(MiraslabError):
    """A checkpoint cannot be written or read; the message is ``path: problem[; advice]``."""

    def __init__(self, path: Path, problem: str, advice: str = ""):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}" + (f"; {advice}" if advice else ""))


class CheckpointNotFoundError(CheckpointError):
    """No checkpoint where one was asked for, or ``latest`` names a directory that is gone."""


class CheckpointCorruptedError(CheckpointError):
    """A checkpoint directory is incomplete or a file does not match its manifest."""


@attrs.frozen(eq=False)
class Checkpoint:
    """A loaded checkpoint; tensors are on the CPU."""

    step: int
    model: dict[str, torch.Tensor]  # pass to model.load_state_dict
    optimizer: dict[str, Any] | None  # pass to optimizer.load_state_dict
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    path: Path


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any] | None,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    keep: int,
) -> Path:
    """Write a checkpoint atomically, point ``latest`` at it, prune to ``keep``; return its path."""
    if step < 0 or keep < 1:
        raise ValueError(f"save_checkpoint needs step >= 0 and keep >= 1, got step={step}, keep={keep}")
    final = checkpoint_dir(run_dir, step)
    root = final.parent
    # Encode before touching the disk, so an unstorable value leaves no trace.
    meta_tree = encode_state(meta, what="checkpoint meta")
    optimizer_tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        optimizer_tree = encode_state(optimizer, what="optimizer state", tensors=optimizer_tensors)

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # this process's own failed attempt
    tmp.mkdir()
    files: dict[str, dict[str, Any]] = {}

    def put(name: str, write: Callable[[Path], None]) -> None:
        write(tmp / name)
        files[name] = seal_file(tmp / name)
        _reached(name, step)

    try:
        put(MODEL, lambda p: write_tensors(p, model, what="model"))
        if optimizer is not None:
            put(OPTIMIZER_TENSORS, lambda p: write_tensors(p, optimizer_tensors, what="optimizer"))
            put(OPTIMIZER_JSON, lambda p: write_json(p, optimizer_tree))
        put(TENSORS, lambda p: write_tensors(p, tensors, what="tensors"))
        put(META, lambda p: write_json(p, meta_tree))
        write_json(tmp / MANIFEST, _manifest(step, files))
        fsync_dir(tmp)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(error):
            raise CheckpointError(
                final, "cannot be written: the disk is full", _kept_advice(run_dir)
            ) from None
        raise

    if final.exists():  # re-saving a step: move the old one out of the name first
        os.rename(final, root / f".tmp-replaced-{final.name}-{os.getpid()}")
    os.rename(tmp, final)
    fsync_dir(root)
    _reached("renamed", step)
    # The commit point: until this replace, a resume finds the previous checkpoint.
    _point_latest(root, final.name)
    _prune(root, keep=keep, latest=final.name)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint directory, or a run directory's ``latest``; verify before parsing."""
    path = Path(path)
    if (path / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            problem = f"the run has no committed checkpoint ({CHECKPOINTS}/{LATEST} does not exist)"
            raise CheckpointNotFoundError(path, problem, _resume_advice(path / CHECKPOINTS))
        path = latest
    elif not _STEP_DIR.fullmatch(path.name) and not (path / MANIFEST).exists():
        raise CheckpointNotFoundError(
            path, f"is neither a step-N checkpoint nor a run directory with {CHECKPOINTS}/"
        )
    try:
        manifest = verify_checkpoint(path)
    except CheckpointError as error:
        raise type(error)(error.path, error.problem, _resume_advice(path.parent, exclude=path)) from None

    def parse(name: str, read: Callable[[Path], Any]) -> Any:
        try:
            return read(path / name)
        except ValueError as error:  # json.JSONDecodeError is one
            raise CheckpointCorruptedError(
                path, f"{name} {error}", _resume_advice(path.parent, path)
            ) from None

    optimizer = None
    if OPTIMIZER_JSON in manifest["files"]:
        optimizer_tensors = parse(OPTIMIZER_TENSORS, read_tensors)
        optimizer = parse(OPTIMIZER_JSON, lambda p: decode_state(_read_json(p), optimizer_tensors))
    return Checkpoint(
        step=manifest["step"],
        model=parse(MODEL, read_tensors),
        optimizer=optimizer,
        tensors=parse(TENSORS, read_tensors),
        meta=parse(META, lambda p: decode_state(_read_json(p))),
        path=path,
    )


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check a checkpoint directory against its manifest and return the manifest; raise if invalid."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointNotFoundError(path, "no such checkpoint directory")
    if not (path / MANIFEST).is_file():
        raise CheckpointCorruptedError(path, f"{MANIFEST} is missing, so writing it never finished")
    try:
        manifest = _read_json(path / MANIFEST)
        files: dict[str, dict[str, Any]] = manifest["files"]
        step = manifest["step"]
        expected = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointCorruptedError(path, f"{MANIFEST} is not a valid manifest") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        found = f"{manifest.get('format')} version {manifest.get('version')}"
        raise CheckpointCorruptedError(path, f"{MANIFEST} is {found}, not {FORMAT} version {VERSION}")
    match = _STEP_DIR.fullmatch(path.name)
    if match and int(match[1]) != step:
        raise CheckpointCorruptedError(path, f"{MANIFEST} is for step {step}, not the directory's step")
    listed = set(files)
    optimizer_files = listed & _OPTIMIZER
    if (
        not listed >= _REQUIRED
        or listed - _REQUIRED - _OPTIMIZER
        or optimizer_files not in (set(), _OPTIMIZER)
    ):
        raise CheckpointCorruptedError(path, f"{MANIFEST} lists {sorted(listed)}, not a checkpoint's files")
    for name, (size, sha256) in expected.items():
        file = path / name
        if not file.is_file():
            raise CheckpointCorruptedError(path, f"{name} is missing")
        if (found_size := file.stat().st_size) != size:
            problem = f"{name} is truncated or corrupted ({found_size} bytes, the manifest says {size})"
            raise CheckpointCorruptedError(path, problem)
        if file_digest(file)[1] != sha256:
            raise CheckpointCorruptedError(path, f"{name} is corrupted (sha256 does not match the manifest)")
    return manifest


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The directory ``checkpoints/latest`` names (not verified), or None before the first save."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = _read_pointer(pointer)
    if name is None or not _STEP_DIR.fullmatch(name):
        reads = "it is not a short UTF-8 line" if name is None else f"it reads {name[:40]!r}"
        problem = f"does not name a checkpoint directory ({reads})"
        raise CheckpointCorruptedError(pointer, problem, _resume_advice(root))
    if not (root / name).is_dir():
        raise CheckpointNotFoundError(
            pointer, f"points to {name}, which does not exist", _resume_advice(root)
        )
    return root / name


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a save ever committed or renamed a checkpoint in this run (valid or not)."""
    root = Path(run_dir) / CHECKPOINTS
    return (root / LATEST).exists() or bool(_step_dirs(root))


def newest_valid_checkpoint(run_dir: Path) -> Path | None:
    """``latest`` if it verifies, else the highest step that does; None if none does."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    named = root / name if (name := _read_pointer(pointer)) else None
    steps = list(reversed(_step_dirs(root)))
    for candidate in ([named] if named in steps else []) + [d for d in steps if d != named]:
        try:
            verify_checkpoint(candidate)
        except CheckpointError:
            continue
        return candidate
    return None


def _manifest(step: int, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "step": step, "torch": torch.__version__, "files": files}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _step_dirs(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, lowest step first."""
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if _STEP_DIR.fullmatch(d.name) and d.is_dir()]
    return sorted(dirs, key=lambda d: int(d.name.removeprefix("step-")))


def _resume_advice(root: Path, exclude: Path | None = None) -> str:
    valid = []
    for candidate in reversed(_step_dirs(root)):
        if candidate == exclude:
            continue
        try:
            verify_checkpoint(candidate)
        except CheckpointError:
            continue
        valid.append(candidate)
    if not valid:
        return f"no {'other ' if exclude else ''}valid checkpoint in {root}"
    names = ", ".join(d.name for d in valid)
    return f"valid checkpoints: {names}; resume from {valid[0].name} with --resume-from {valid[0]}"


def drop_later_checkpoints(run_dir: Path, checkpoint: Path) -> list[str]:
    """Make ``checkpoint`` the run's ``latest`` and remove the checkpoints after it.

    A resume from an earlier checkpoint starts a new timeline: the later checkpoints belong
    to the abandoned one, and pruning must not keep them over the new timeline's. Returns
    the names removed. A checkpoint outside this run's ``checkpoints/`` changes nothing.
    """
    root = Path(run_dir) / CHECKPOINTS
    checkpoint = Path(checkpoint)
    match = _STEP_DIR.fullmatch(checkpoint.name)
    if match is None or checkpoint.parent.resolve() != root.resolve():
        return []
    later = [d for d in _step_dirs(root) if int(d.name.removeprefix("step-")) > int(match[1])]
    if not later and latest_checkpoint_name(root) == checkpoint.name:
        return []
    _point_latest(root, checkpoint.name)  # first: a crash below leaves a consistent run
    for old in later:
        _remove(root, old)
    fsync_dir(root)
    return [d.name for d in later]


def latest_checkpoint_name(root: Path) -> str | None:
    pointer = Path(root) / LATEST
    return _read_pointer(pointer)


def _read_pointer(pointer: Path) -> str | None:
    """``latest``'s text, or None when it is absent or not a short UTF-8 file (crafted or torn)."""
    try:
        return read_bounded_text(pointer, MAX_POINTER_BYTES, "checkpoint pointer").strip()
    except FileRefused:
        return None


def _point_latest(root: Path, name: str) -> None:
    """Replace ``latest`` atomically (the commit point of a save)."""
    pointer_tmp = root / f"{LATEST}.tmp"
    with open(pointer_tmp, "w", encoding="utf-8") as pointer:
        pointer.write(name + "\n")
        pointer.flush()
        os.fsync(pointer.fileno())
    os.replace(pointer_tmp, root / LATEST)
    fsync_dir(root)


def _remove(root: Path, old: Path) -> None:
    # Renamed first: a crash mid-removal must not leave a half-deleted step-* directory.
    doomed = root / f".tmp-delete-{old.name}-{os.getpid()}"
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(old, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _disk_full(error: BaseException) -> bool:
    """ENOSPC, from Python (OSError) or from safetensors' Rust writer (``os error 28``)."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return "os error 28" in str(error) or "StorageFull" in str(error)


def _kept_advice(run_dir: Path) -> str:
    try:
        kept = latest_checkpoint(run_dir)
    except CheckpointError:
        kept = None
    where = f"the last good checkpoint {kept} is kept" if kept else "no earlier checkpoint was written"
    return f"{where}; free some space, then `miraslab train --resume {run_dir}`"


def _prune(root: Path, *, keep: int, latest: str) -> None:
    others = [d for d in _step_dirs(root) if d.name != latest]
    for old in others[: max(0, len(others) - (keep - 1))]:
        # Renamed first: a crash mid-removal must not leave a half-deleted step-* directory.
        doomed = root / f".tmp-delete-{old.name}-{os.getpid()}"
        shutil.rmtree(doomed, ignore_errors=True)
        os.rename(old, doomed)
    fsync_dir(root)
    for entry in root.iterdir():
        owner = _TMP_OWNER.fullmatch(entry.name)
        if owner and entry.is_dir() and not _alive_other_process(int(owner[1])):
            shutil.rmtree(entry, ignore_errors=True)


def _alive_other_process(pid: int) -> bool:
    """Whether another live process may still be writing a ``.tmp-*-<pid>`` directory."""
    if pid == os.getpid():
        return False
    if os.name != "posix":  # os.kill would terminate it there; leave the directory alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:  # e.g. pid out of range on this platform
        return False
    return True


def _reached(stage: str, step: int) -> None:
    if fault_hook is not None:
        fault_hook(stage, step)
