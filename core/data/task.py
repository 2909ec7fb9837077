"""What the trainer asks of a task (the ``task`` component kind): a vocabulary and batches.

The trainer reaches a task only through ``miraslab.build_component(recipe.data.task)``.
A task yields endless batches of token ids for one process; the contract that makes
distributed runs reproducible is that the *global* batch never depends on the number of
processes: with ``world_size`` W, process ``rank`` r yields exactly rows
``[r * b / W, (r + 1) * b / W)`` of the batch a single process yields at the same step.
So a run resumed on a different number of processes continues the same data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RecipeError

if TYPE_CHECKING:
    import tokenizers
    import torch

SPLITS = ("train", "val")


class Batches(Iterator["torch.Tensor | dict[str, torch.Tensor]"], ABC):
    """Endless batches of ``batch_size // world_size`` rows for one process.

    A text batch is one int64 tensor of ``seq_len + 1`` tokens a row: the model reads
    ``row[:, :-1]`` and predicts ``row[:, 1:]``.  A task with answers yields a dict of
    ``(rows, seq_len)`` tensors, ``inputs`` and ``labels`` (what the logits at each position
    must predict, -100 where nothing is asked; loss and accuracy count only the rest) and
    anything else an evaluator may use (MQAR's ``distance``); see ``miraslab.data.batch``.
    ``state_dict()`` is JSON-serialisable and the same on every process;
    a task given it back as ``state`` continues with exactly the batch that would have
    come next.
    """

    def __iter__(self) -> Batches:
        return self

    @abstractmethod
    def __next__(self) -> torch.Tensor | dict[str, torch.Tensor]: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...


class Task(ABC):
    """A data source or synthetic task: its tokenizer, vocabulary and batches."""

    @abstractmethod
    def tokenizer(self) -> tokenizers.Tokenizer | None:
        """The text tokenizer, or None for a synthetic task with its own vocabulary."""

    @abstractmethod
    def vocab_size(self) -> int:
        """Token ids are in ``[0, vocab_size)``."""

    @abstractmethod
    def batches(
        self,
        split: str,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        state: dict[str, Any] | None = None,
    ) -> Batches:
        """Batches of ``split`` ("train" or "val"); ``batch_size`` counts all processes."""

    def example_length(self) -> int | None:
        """The ``data.seq_len`` this task's fixed-length examples need, or None for any length
        (what ``miraslab.testing.check_task`` asks its batches at)."""
        return None

    def tokenizer_path(self) -> Path | None:
        """Where the tokenizer.json is (or will be once trained); None when there is no file."""
        return None

    def document_separator(self) -> int | None:
        """The token that opens each document packed in a row (``extras["doc_start"]`` marks it,
        see ``miraslab.data.documents``); None when the rows hold no documents."""
        return None


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def rank_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of the global batch that process ``rank`` of ``world_size`` trains on."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}) for world_size {world_size}, got {rank}")
    if batch_size % world_size:
        raise RecipeError(
            [
                f"train.batch_size: expected a multiple of the number of processes ({world_size}), "
                f"got {batch_size}; each process takes an equal share of the global batch"
            ]
        )
    per_rank = batch_size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def check_data_state(
    state: dict[str, Any], expected_format: str, task: str, *, split: str, seed: int, fingerprint: str
) -> None:
    """Refuse a saved data state that cannot resume these batches: a state of another format or
    task (``state["task"]``, where the format serves several), another split or seed, or task
    settings changed since (``fingerprint``, a hash of its parameters).  Each is one line."""
    if state.get("format") != expected_format or state.get("task", task) != task:
        found = state.get("task") or state.get("format")
        raise RecipeError(
            [f"data: a saved data state of {found!r} cannot resume the {task} task; start it afresh"]
        )
    if (state.get("split"), state.get("seed")) != (split, seed):
        raise RecipeError(
            [
                f"data: the saved data state is for split {state.get('split')!r} with seed {state.get('seed')}, "
                f"not split {split!r} with seed {seed}; resume with the same seed"
            ]
        )
    if state.get("fingerprint") != fingerprint:
        raise RecipeError(
            [
                f"data.task: the {task} settings changed since this data state was saved, so its position "
                "means nothing here; restore them, or start the data from the beginning"
            ]
        )


def check_seq_len(task: str, expected: int, seq_len: int) -> None:
    """A task whose examples have their own length (``data.task.seq_len``) refuses another
    ``data.seq_len``, in one line."""
    if seq_len != expected:
        raise RecipeError(
            [
                f"data.seq_len: expected the {task} task's seq_len ({expected}), got {seq_len}; "
                "set data.seq_len and data.task.seq_len to the same length"
            ]
        )
