"""What the six MAD tasks share: fixed example sets, their order, sharding and resume.

Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures" (athms/mad-lab).
mad-lab does not stream fresh examples: each task has a fixed training set of
``num_train_examples`` (12 800; 256 for memorization; the size is one of its difficulty knobs)
trained for 200 epochs, and a fixed test set of 1 280 examples.  So here:

- example ``i`` of a split is a pure function of (seed, split, i): examples are generated
  ``BLOCK`` at a time, block ``b`` from the generator keyed by (seed, split, 0, b), so an
  example never depends on the batch size or the number of processes;
- the training set is examples ``0 .. train_examples − 1``, visited in a fresh permutation
  every epoch (the permutation of epoch ``e`` from the generator keyed by (seed, split, 1, e));
  ``train_examples = 0`` draws a new example for every row instead (no epochs);
- the validation set is examples ``0 .. val_examples − 1`` of its own stream, in order, so
  every evaluation pass sees the same examples, and never training's.

A batch is a dict of (rows, seq_len) int64 tensors, as ``miraslab.data.batch`` describes:
``inputs``, ``labels`` (-100 where nothing is scored; ``labels[:, t]`` is predicted from
``inputs[:, : t + 1]``) and, for the tasks where an answer is copied from earlier in the
sequence, ``distance`` (tokens from where the answer was shown to where it is asked).
Accuracy over the labels that are not -100 is mad-lab's metric (its ``Accuracy`` is a
torchmetrics multiclass accuracy with ``ignore_index=-100`` over the argmax of every position).

The global batch of step s is rows ``s·B .. s·B + B − 1`` of the split's example order;
process r of W takes its share (``rank_rows``), so resuming needs only the step.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

import miraslab
from miraslab.api import ParamValueError, RecipeError, SeededBatches, SeededTask, cache_key

IGNORE = -100  # F.cross_entropy's default ignore_index, and mad-lab's target_ignore_idx
BLOCK = 256  # examples generated together from one generator
EXAMPLES, EPOCHS = 0, 1  # what a generator keyed (seed, split, kind, index) draws

Examples = dict[str, np.ndarray]
Generate = Callable[[np.random.Generator, int], Examples]


def train_examples_param(default: int) -> Any:
    return miraslab.param(
        default,
        ge=0,
        doc="size of the fixed training set, visited in a new order every epoch (mad-lab's "
        "num_train_examples); 0 draws a fresh example for every row",
    )


def val_examples_param() -> Any:
    return miraslab.param(
        1280, ge=0, doc="size of the fixed validation set (mad-lab's num_test_examples); 0 draws fresh ones"
    )


def train_labels_param() -> Any:
    return miraslab.param(
        "next_token",
        choices=("next_token", "answers"),
        doc="what training scores: every next token, as mad-lab trains the recall tasks, or only "
        "the answers validation scores",
    )


def check_noise(params: Any) -> None:
    """Noise needs tokens of its own: refuse ``frac_noise`` > 0 with no ``noise_vocab_size``."""
    if params.frac_noise > 0 and params.noise_vocab_size < 1:
        raise ParamValueError("noise_vocab_size", "at least 1 when frac_noise > 0", params.noise_vocab_size)


def next_token_labels(stream: np.ndarray, length: int) -> np.ndarray:
    """Labels for reading ``stream[:, :length]``: the token after each one, -100 past the end."""
    labels = np.full((stream.shape[0], length), IGNORE, dtype=np.int64)
    known = min(length, stream.shape[1] - 1)
    labels[:, :known] = stream[:, 1 : known + 1]
    return labels


def noise_mask(rng: np.random.Generator, rows: int, slots: int, fraction: float) -> np.ndarray:
    """(rows, slots): which slots are noise, each with probability ``fraction``, but never all:
    one slot per row, drawn uniformly, is always a real one (mad-lab's ``not_noise_idx``)."""
    if fraction <= 0:
        return np.zeros((rows, slots), dtype=bool)
    noise = rng.random((rows, slots)) < fraction
    noise[np.arange(rows), rng.integers(0, slots, rows)] = False
    return noise


class ExampleSet:
    """Examples 0, 1, 2, … of one split, generated a block at a time and kept."""

    def __init__(self, generate: Generate, seed: int, stream: int, size: int):
        self.generate, self.seed, self.stream, self.size = generate, seed, stream, size
        self._blocks: dict[int, Examples] = {}

    def rows(self, indices: np.ndarray) -> Examples:
        blocks = indices // BLOCK
        if not self.size:  # an endless stream: indices only grow, so older blocks are done with
            for old in [b for b in self._blocks if b < blocks.min()]:
                del self._blocks[old]
        for block in np.unique(blocks).tolist():
            if block not in self._blocks:
                rng = np.random.default_rng([self.seed, self.stream, EXAMPLES, block])
                self._blocks[block] = self.generate(rng, BLOCK)
        names = self._blocks[int(blocks[0])].keys()
        return {
            name: np.stack(
                [
                    self._blocks[b][name][i]
                    for b, i in zip(blocks.tolist(), (indices % BLOCK).tolist(), strict=True)
                ]
            )
            for name in names
        }


class MadBatches(SeededBatches):
    """Rows of the split's fixed example set, in a new order every training epoch."""

    task: MadTask

    def prepare(self, state: dict[str, Any] | None) -> None:
        training, seed = self.split == "train", self.seed

        def generate(rng: np.random.Generator, rows: int) -> Examples:
            return self.task.generate(rng, rows, training=training, seed=seed)

        self.examples = ExampleSet(
            generate, seed, self.task.stream(self.split), self.task.set_size(self.split)
        )
        self.shuffle = training
        self._permutations: dict[int, np.ndarray] = {}

    def example_indices(self, step: int) -> np.ndarray:
        """Which examples rows of this process's share of ``step``'s global batch are."""
        positions = step * self.batch_size + np.arange(self.batch_size)[self.rows]
        size = self.examples.size
        if not size:
            return positions
        if not self.shuffle:
            return positions % size
        epochs = positions // size
        return np.array(
            [
                self._permutation(e)[p]
                for e, p in zip(epochs.tolist(), (positions % size).tolist(), strict=True)
            ],
            dtype=np.int64,
        )

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            for old in [e for e in self._permutations if e < epoch - 1]:
                del self._permutations[old]
            rng = np.random.default_rng([self.seed, self.examples.stream, EPOCHS, epoch])
            self._permutations[epoch] = rng.permutation(self.examples.size)
        return self._permutations[epoch]

    def draw(self, step: int) -> Examples:
        return self.examples.rows(self.example_indices(step))


class MadTask(SeededTask):
    """One MAD task: its vocabulary, its example generator and its two fixed example sets.

    A subclass names itself (``name``), says how long the rows it yields are
    (``input_length``) and generates examples (``generate``); ``params`` must have
    ``vocab_size``, ``train_examples`` and ``val_examples``.
    """

    state_format = "miraslab.mad/1"
    state_names_task = True  # one format serves the six tasks
    batches_class = MadBatches

    def input_length(self) -> int:
        """Tokens a row the model reads: what data.seq_len must be."""
        return self.params.seq_len

    def example_length(self) -> int:
        return self.input_length()

    def fingerprint(self) -> str:
        return cache_key({"task": self.name, **attrs.asdict(self.params)})

    @abstractmethod
    def generate(self, rng: np.random.Generator, rows: int, *, training: bool, seed: int) -> Examples:
        """``rows`` examples as (rows, input_length) integer arrays; ``training`` is mad-lab's
        ``is_training`` (some tasks score training and test rows differently)."""

    def set_size(self, split: str) -> int:
        return self.params.train_examples if split == "train" else self.params.val_examples

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len != self.input_length():
            raise RecipeError(
                [
                    f"data.seq_len: expected the {self.name} task's row length ({self.input_length()}), got "
                    f"{seq_len}; set data.seq_len to {self.input_length()}"
                ]
            )
