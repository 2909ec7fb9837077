"""Training state as files: tensors in safetensors, everything else in JSON, never pickle.

Two encodings, both exact (what is read back equals what was written, type for type):

- ``write_tensors`` / ``read_tensors``: a ``dict[str, Tensor]`` as one safetensors file.
  safetensors refuses tensors that share memory and non-contiguous ones. A tensor that appears
  under two keys (tied weights: ``embed.weight is head.weight`` in ``model.state_dict()``) is
  stored once and the second key recorded as an alias in the file's metadata, so reading gives
  both keys bound to one tensor, as the state_dict had them. Other overlapping views are copied.
  Tensors are read back on the CPU.
- ``encode_state`` / ``decode_state``: a nested state (a torch optimizer ``state_dict``, a
  scheduler state, a data-iterator state) as a JSON tree plus, optionally, named tensors. Plain
  JSON would turn tuples into lists and the optimizer's integer parameter ids into strings; the
  tree tags those (``{"__tuple__": [...]}``, ``{"__items__": [[key, value], ...]}``) and puts
  ``{"__tensor__": "state.0.exp_avg"}`` where a tensor was.

Plus the durability primitives a crash-safe writer needs: fsync'd writes and directory fsyncs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import MiraslabError

_TUPLE, _ITEMS, _TENSOR = "__tuple__", "__items__", "__tensor__"
_ALIASES, _ORDER = "miraslab.aliases", "miraslab.order"  # safetensors metadata keys


class UnstorableStateError(MiraslabError):
    """A value handed to a checkpoint has a type that cannot be written without pickle."""


# --- tensors <-> safetensors -------------------------------------------------------------------


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], *, what: str) -> None:
    """Write ``tensors`` to a safetensors file (not fsync'd: see ``seal_file``)."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_key_of_view: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[str, int]] = set()
    for key, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise UnstorableStateError(f"{what}[{key!r}] is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach()
        if tensor.numel() == 0:  # empty tensors have no storage to share
            stored[key] = tensor.cpu().clone()
            continue
        storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
        view = (*storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if view in first_key_of_view:
            aliases[key] = first_key_of_view[view]
            continue
        first_key_of_view[view] = key
        if storage in storages:
            tensor = tensor.clone()
        storages.add(storage)
        stored[key] = tensor.contiguous().cpu()
    metadata = {_ALIASES: json.dumps(aliases), _ORDER: json.dumps(list(tensors))}
    save_file(stored, str(path), metadata=metadata)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a file written by ``write_tensors``; ``ValueError`` says what is wrong with it."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            stored = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not a dict)
            metadata = file.metadata() or {}
        aliases: dict[str, str] = json.loads(metadata.get(_ALIASES, "{}"))
        order: list[str] = json.loads(metadata.get(_ORDER, "[]")) or list(stored)
    except (SafetensorError, ValueError) as error:
        raise ValueError(f"is not a readable safetensors file ({error})") from None
    if not isinstance(aliases, dict) or not isinstance(order, list):
        raise ValueError("has malformed miraslab metadata")
    for alias, target in aliases.items():
        if target not in stored:
            raise ValueError(f"names {alias!r} as an alias of {target!r}, which it does not hold")
        stored[alias] = stored[target]
    if sorted(order) != sorted(stored):
        raise ValueError("holds other tensors than its metadata lists")
    return {key: stored[key] for key in order}


# --- nested state <-> JSON tree ----------------------------------------------------------------


def encode_state(
    value: Any, *, what: str, tensors: dict[str, torch.Tensor] | None = None, path: str = ""
) -> Any:
    """A JSON-serialisable tree of ``value``; tensors go into ``tensors`` (None: refuse them).

    Tensor keys are the dotted path to the tensor, e.g. ``state.0.exp_avg``.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        if tensors is None:
            raise UnstorableStateError(
                f"{what} at {path or 'top level'} is a tensor; pass tensors in tensors="
            )
        key, suffix = path, 1
        while key in tensors:  # only if a dict key itself contains a dot
            key, suffix = f"{path}#{suffix}", suffix + 1
        tensors[key] = value
        return {_TENSOR: key}

    def child(item: Any, name: object) -> Any:
        return encode_state(item, what=what, tensors=tensors, path=f"{path}.{name}" if path else str(name))

    if isinstance(value, tuple):
        return {_TUPLE: [child(item, i) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [child(item, i) for i, item in enumerate(value)]
    if isinstance(value, dict):
        plain = all(isinstance(key, str) for key in value) and not (len(value) == 1 and _is_tag(*value))
        if plain:
            return {key: child(item, key) for key, item in value.items()}
        return {
            _ITEMS: [
                [encode_state(key, what=what, path=path), child(item, key)] for key, item in value.items()
            ]
        }
    raise UnstorableStateError(
        f"{what} at {path or 'top level'} is a {type(value).__name__}; a checkpoint stores tensors, numbers, "
        "strings, None, and lists, tuples and dicts of those"
    )


def decode_state(tree: Any, tensors: dict[str, torch.Tensor] | None = None) -> Any:
    """The value ``encode_state`` made ``tree`` from; ``ValueError`` if the tree is malformed."""
    if isinstance(tree, list):
        return [decode_state(item, tensors) for item in tree]
    if not isinstance(tree, dict):
        return tree
    if len(tree) == 1:
        ((tag, inner),) = tree.items()
        if tag == _TUPLE:
            return tuple(decode_state(item, tensors) for item in inner)
        if tag == _ITEMS:
            try:
                return {decode_state(key, tensors): decode_state(item, tensors) for key, item in inner}
            except (TypeError, ValueError):
                raise ValueError(f"holds a malformed {_ITEMS} entry") from None
        if tag == _TENSOR:
            if tensors is None or inner not in tensors:
                raise ValueError(f"refers to a tensor {inner!r} that was not saved with it")
            return tensors[inner]
    return {key: decode_state(item, tensors) for key, item in tree.items()}


def _is_tag(key: str) -> bool:
    return key in (_TUPLE, _ITEMS, _TENSOR)


# --- durable files -----------------------------------------------------------------------------


def write_json(path: Path, tree: Any) -> None:
    """Write a JSON file and fsync it."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(tree, file, indent=1)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())


def seal_file(path: Path) -> dict[str, Any]:
    """fsync a written file and return its manifest entry: ``{"size": ..., "sha256": ...}``."""
    with open(path, "rb") as file:
        size, sha256 = _digest(file)
        os.fsync(file.fileno())
    return {"size": size, "sha256": sha256}


def file_digest(path: Path) -> tuple[int, str]:
    """Size in bytes and hex sha256 of a file."""
    with open(path, "rb") as file:
        return _digest(file)


def _digest(file: BinaryIO) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while block := file.read(1 << 20):  # 1 MiB blocks: checkpoints can be larger than memory
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed, removed names) durable."""
    if os.name != "posix":  # Windows cannot open a directory; NTFS journals renames itself
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
