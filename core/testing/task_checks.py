"""The kit for tasks: the batches a trainer can rely on (``miraslab.api.Task``'s contract).

Deterministic for a seed, resumable from ``state_dict()`` to exactly the next batch, split
over processes by rows of the one global batch, token ids inside the vocabulary, and a JSON
state.  Exact comparisons: batches are integers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from .. import api
from ..registry import Registry, get_registry
from .failure import KitFailure


def _rows(batch: Any) -> dict[str, torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return {"tokens": batch}
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    raise KitFailure(f"a batch must be a tensor or a dict of tensors, got {type(batch).__name__}")


def _same(a: Any, b: Any) -> bool:
    a, b = _rows(a), _rows(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_task(
    name: str,
    options: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    batch_size: int = 4,
    seq_len: int | None = None,
) -> None:
    """``seq_len`` defaults to the task's ``example_length()`` (tasks with fixed-length
    examples refuse any other), else 16."""
    registry = registry or get_registry()
    params = api.make_component("task", name, dict(options or {}), registry).params
    task = registry.get("task", name).build(params)
    seq_len = seq_len or task.example_length() or 16
    vocab = task.vocab_size()
    what = f"task {name!r}"
    if not (isinstance(vocab, int) and vocab >= 2):
        raise KitFailure(f"{what}: vocab_size() must be an integer >= 2, got {vocab!r}")

    def batches(split: str = "train", seed: int = 0, **kw: Any) -> Any:
        return task.batches(split, seq_len=seq_len, batch_size=batch_size, seed=seed, **kw)

    first = batches()
    run = [next(first) for _ in range(3)]
    again = batches()
    if not all(_same(a, next(again)) for a in run):
        raise KitFailure(f"{what}: two iterators with the same seed yield different batches")
    for key, tensor in _rows(run[0]).items():
        if tensor.shape[0] != batch_size:
            raise KitFailure(f"{what}: {key} has {tensor.shape[0]} rows, expected batch_size {batch_size}")
    ids = _rows(run[0]).get("tokens", _rows(run[0]).get("inputs"))
    if ids is None or ids.dtype != torch.long or ids.min() < 0 or ids.max() >= vocab:
        raise KitFailure(f"{what}: token ids must be int64 in [0, {vocab})")
    resumed_from = batches()
    next(resumed_from)
    state = resumed_from.state_dict()
    try:
        state = json.loads(json.dumps(state))
    except TypeError as exc:
        raise KitFailure(f"{what}: state_dict() is not JSON-serialisable: {exc}") from None
    if not _same(next(batches(state=state)), run[1]):
        raise KitFailure(f"{what}: batches resumed from state_dict() do not continue with the next batch")
    halves = [next(batches(rank=r, world_size=2)) for r in (0, 1)]
    for key, tensor in _rows(run[0]).items():
        joined = torch.cat([_rows(h)[key] for h in halves])
        if not torch.equal(joined, tensor):
            raise KitFailure(
                f"{what}: ranks 0 and 1 of 2 together are not the rows of the one-process batch ({key})"
            )
