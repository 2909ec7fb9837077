"""A synthetic task whose every batch is a pure function of (seed, split, step): the base of
``mqar``, ``niah`` and the MAD tasks, and of any synthetic task a plugin adds.

What such a task needs besides its examples is the same each time, so it is written here once:
the step counter (the data state is only the number of batches drawn), this process's rows of
each global batch (``rank_rows``: the global batch never depends on the number of processes),
the fingerprint of the task's settings, and a ``state_dict`` that ``check_data_state`` reads
back.  A subclass says what it is called and how it draws examples::

    class MyTask(SeededTask):
        name = "my_task"
        state_format = "acme.my_task/1"

        def examples(self, rng, rows):   # the step's whole global batch, from its own generator
            ...                          # {"inputs": (rows, seq_len), "labels": ..., ...}

A task that draws otherwise (fixed example sets, a text haystack that carries its own state)
subclasses ``SeededBatches`` too, overriding ``draw`` (and ``prepare`` / ``state_dict`` for
what it adds), and names it as its ``batches_class``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from .cache import cache_key
from .task import Batches, Task, check_data_state, check_seq_len, check_split, rank_rows

SPLIT_STREAMS = {"train": 0, "val": 1}  # training and validation never draw from the same stream

Examples = dict[str, np.ndarray]
DataState = dict[str, Any]


class SeededBatches(Batches):
    """This process's rows of each global batch; the state is the number of batches drawn."""

    def __init__(
        self,
        task: SeededTask,
        split: str,
        *,
        batch_size: int,
        seed: int,
        rows: slice,
        state: DataState | None,
    ):
        self.task, self.split, self.seed, self.batch_size = task, split, seed, batch_size
        self.rows = rows  # this process's share of the global batch (rank_rows)
        self.fingerprint = task.fingerprint()
        self.steps = 0
        if state is not None:
            check_data_state(
                state, task.state_format, task.name, split=split, seed=seed, fingerprint=self.fingerprint
            )
            self.steps = int(state["steps"])
        self.prepare(state)

    def prepare(self, state: DataState | None) -> None:
        """Set up what ``draw`` reads beyond the step (called last in ``__init__``, with the saved
        data state or None): nothing here."""

    def generator(self, step: int) -> np.random.Generator:
        """The generator of ``step``'s global batch, keyed by (seed, the split's stream, step)."""
        return np.random.default_rng([self.seed, self.task.stream(self.split), step])

    def draw(self, step: int) -> Examples:
        """This process's rows of ``step``'s global batch: the task's ``examples`` for the whole
        batch, drawn from the step's generator, sliced to this process's share."""
        examples = self.task.examples(self.generator(step), self.batch_size)
        return {name: array[self.rows] for name, array in examples.items()}

    def __next__(self) -> dict[str, torch.Tensor]:
        examples = self.draw(self.steps)
        self.steps += 1
        return {name: torch.from_numpy(np.array(array, dtype=np.int64)) for name, array in examples.items()}

    def state_dict(self) -> dict[str, Any]:
        named = {"task": self.task.name} if self.task.state_names_task else {}
        return {
            "format": self.task.state_format,
            **named,
            "split": self.split,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "steps": self.steps,
        }


class SeededTask(Task):
    """A synthetic task with its own vocabulary, generated on the fly from the seed.

    ``params`` (its attrs params) must have ``vocab_size`` and ``seq_len``, or the subclass
    overrides ``vocab_size`` and ``example_length``.
    """

    name: ClassVar[str]  # the registered name, as errors and the data state say it
    state_format: ClassVar[str]  # the data state's "format", e.g. "miraslab.mqar/1"
    state_names_task: ClassVar[bool] = False  # a format several tasks share records which one
    batches_class: ClassVar[type[SeededBatches]] = SeededBatches

    def __init__(self, params: Any):
        self.params = params

    def tokenizer(self) -> None:
        return None

    def vocab_size(self) -> int:
        return self.params.vocab_size

    def example_length(self) -> int:
        return self.params.seq_len

    def fingerprint(self) -> str:
        """A hash of the settings: a data state saved under others cannot resume these batches."""
        return cache_key(attrs.asdict(self.params))

    def stream(self, split: str) -> int:
        """Which stream of examples ``split`` draws from."""
        return SPLIT_STREAMS[split]

    def examples(self, rng: np.random.Generator, rows: int) -> Examples:
        """``rows`` examples drawn from ``rng``, each a (rows, seq_len) integer array (what the
        default ``SeededBatches.draw`` asks for one step's global batch)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement examples(rng, rows), or name a batches_class "
            "whose draw(step) makes the rows"
        )

    def check_seq_len(self, seq_len: int) -> None:
        """Refuse a ``data.seq_len`` the examples do not have, in one line."""
        check_seq_len(self.name, self.example_length(), seq_len)

    def batches(
        self,
        split: str,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        state: DataState | None = None,
    ) -> SeededBatches:
        check_split(split)
        self.check_seq_len(seq_len)
        rows = rank_rows(batch_size, rank, world_size)
        return self.batches_class(self, split, batch_size=batch_size, seed=seed, rows=rows, state=state)
