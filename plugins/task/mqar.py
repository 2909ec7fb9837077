"""The ``mqar`` task: multi-query associative recall in Zoology's layout.

Arora, Eyuboglu et al. 2023, "Zoology: Measuring and improving recall in efficient language
models" (HazyResearch/zoology, ``multiquery_ar``).  With N pairs in a sequence of L tokens and
vocabulary V, one example reads::

    inputs:  k1 v1 k2 v2 … kN vN  x x k2 x x x k1 x …      (2N pairs, then L − 2N query region)
    labels:  -100 …          -100  . . v2 . . . v1 . …      (-100 wherever "." is written)

Keys are N distinct tokens of [1, V/2), values N distinct tokens of [V/2, V).  The query region
has (L − 2N) / 2 slots at its even offsets; each key is asked once, at a slot drawn without
replacement with probability ∝ a·s^(a−1) for slot s = 1, 2, … (``power_a`` = a; small a puts
most queries early, a = 1 is uniform).  Every other token of the query region is uniform over
[0, V) (``random_non_queries``) or 0.  As in Zoology the value is never written after its query:
the model must predict it there, and ``labels`` carries it.

A batch is a dict of three (rows, seq_len) int64 tensors:

``inputs``    the tokens the model reads
``labels``    ``labels[:, t]`` is the token to predict from ``inputs[:, : t + 1]`` (the shift the
              trainer applies to text rows, ``row[:, 1:]``, already done): the value at each query
              position, -100 everywhere else (ignored by ``F.cross_entropy`` by default)
``distance``  at each query position, tokens from its key to it (query − key position); 0 where
              ``labels`` is -100.  Bucket accuracy by this.

``min_query_distance`` (ours, not Zoology's) keeps every query at least that many tokens after
its key, e.g. beyond an attention window.  Slots are drawn for the keys in order, as in Zoology;
a slot is offered to a key only when the keys after it can still be placed, so at 0, 1 or 2 (a
query is always at least 2 tokens after its key) the draw is Zoology's.

Each global batch is drawn from its own generator keyed by (seed, split, step), so the batch of a
step is the same on any number of processes (each takes its rows), resuming needs only the step,
and validation draws from its own stream, never training's.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

import miraslab
from miraslab.api import ParamValueError, SeededTask

IGNORE = -100  # F.cross_entropy's default ignore_index, and Zoology's


@attrs.frozen
class MqarParams:
    vocab_size: int = miraslab.param(8192, ge=4, doc="tokens: keys from [1, V/2), values from [V/2, V)")
    seq_len: int = miraslab.param(64, ge=4, doc="tokens per example (even); must equal data.seq_len")
    num_kv_pairs: int = miraslab.param(8, ge=1, doc="key-value pairs per example, each key queried once")
    power_a: float = miraslab.param(
        0.01, gt=0, doc="query slots drawn ∝ a·s^(a−1): small a asks most keys early, 1 is uniform"
    )
    random_non_queries: bool = miraslab.param(
        True, doc="fill the query region's other tokens uniformly from [0, V), as Zoology does; false fills 0"
    )
    min_query_distance: int = miraslab.param(
        0, ge=0, doc="every query at least this many tokens after its key (e.g. beyond an attention window)"
    )

    @property
    def query_slots(self) -> int:
        return (self.seq_len - 2 * self.num_kv_pairs) // 2

    def cross_check(self) -> None:
        n = self.num_kv_pairs
        if self.seq_len % 2:
            raise ParamValueError("seq_len", "an even length (Zoology's layout)", self.seq_len)
        if 4 * n > self.seq_len:
            raise ParamValueError(
                "num_kv_pairs",
                f"at most seq_len / 4 = {self.seq_len // 4} (2N tokens of pairs, then a query slot "
                "per pair in the rest)",
                n,
            )
        if self.vocab_size // 2 - 1 < n:
            raise ParamValueError(
                "vocab_size",
                f"at least {2 * n + 2} so that {n} distinct keys fit in [1, V/2)",
                self.vocab_size,
            )
        # 2·slots is as far as the last key (at 2N − 2) gets from the last slot (at L − 2); at that
        # distance key j still fits at slot slots − N + j, so every smaller one can be met too
        farthest = 2 * self.query_slots
        if self.min_query_distance > farthest:
            raise ParamValueError(
                "min_query_distance",
                f"at most {farthest} for seq_len {self.seq_len} and {n} pairs (the last key's farthest "
                "query slot)",
                self.min_query_distance,
            )


def lowest_slots(params: MqarParams) -> np.ndarray:
    """For key i (at position 2i), the first slot s whose query (at 2N + 2s) is far enough."""
    n = params.num_kv_pairs
    far_enough = math.ceil(params.min_query_distance / 2) - n + np.arange(n)
    return np.maximum(far_enough, 0)


def random_subsets(rng: np.random.Generator, rows: int, low: int, high: int, size: int) -> np.ndarray:
    """``size`` distinct tokens of [low, high) per row, in uniformly random order."""
    scores = rng.random((rows, high - low))
    smallest = np.argpartition(scores, size - 1, axis=1)[:, :size]
    order = np.take_along_axis(scores, smallest, axis=1).argsort(axis=1)
    return np.take_along_axis(smallest, order, axis=1) + low


def query_slots(rng: np.random.Generator, params: MqarParams, rows: int) -> np.ndarray:
    """(rows, N) slots, one per key, distinct, power-law weighted, each far enough from its key.

    Keys are placed in order, each drawing from the free slots ∝ weight.  Slot sets of the keys
    are nested (a later key's is a suffix of an earlier key's), so the keys after i can still be
    placed exactly when, for every later j, the free slots from lowest[j] on number at least the
    keys j..N−1; where that holds with equality for some j, key i must take a slot below lowest[j].
    """
    n, slots = params.num_kv_pairs, params.query_slots
    weight = params.power_a * np.arange(1, slots + 1, dtype=np.float64) ** (params.power_a - 1)
    lowest = lowest_slots(params)
    index = np.arange(slots)
    free = np.ones((rows, slots), dtype=bool)
    chosen = np.empty((rows, n), dtype=np.int64)
    for i in range(n):
        # free slots from t on, for every t (and 0 past the end)
        free_from = np.zeros((rows, slots + 1), dtype=np.int64)
        free_from[:, :slots] = np.cumsum(free[:, ::-1], axis=1)[:, ::-1]
        later = lowest[i + 1 :]
        tight = free_from[:, later] == n - np.arange(i + 1, n)
        below = np.where(tight.any(axis=1), later[tight.argmax(axis=1)], slots) if later.size else slots
        allowed = free & (index >= lowest[i]) & (index[None, :] < np.reshape(below, (-1, 1)))
        cdf = np.cumsum(np.where(allowed, weight, 0.0), axis=1)
        total = cdf[:, -1]
        target = np.minimum(rng.random(rows) * total, np.nextafter(total, 0))
        slot = (cdf <= target[:, None]).sum(axis=1)  # the first slot whose cdf passes the target
        chosen[:, i] = slot
        free[np.arange(rows), slot] = False
    return chosen


def multiquery_ar(params: MqarParams, rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """``rows`` examples: inputs, labels and distance, each (rows, seq_len) int64."""
    n, length, vocab = params.num_kv_pairs, params.seq_len, params.vocab_size
    keys = random_subsets(rng, rows, 1, vocab // 2, n)
    values = random_subsets(rng, rows, vocab // 2, vocab, n)
    query_at = 2 * n + 2 * query_slots(rng, params, rows)

    inputs = np.zeros((rows, length), dtype=np.int64)
    inputs[:, 0 : 2 * n : 2] = keys
    inputs[:, 1 : 2 * n : 2] = values
    np.put_along_axis(inputs, query_at, keys, axis=1)
    labels = np.full((rows, length), IGNORE, dtype=np.int64)
    np.put_along_axis(labels, query_at, values, axis=1)
    distance = np.zeros((rows, length), dtype=np.int64)
    np.put_along_axis(distance, query_at, query_at - 2 * np.arange(n), axis=1)
    if params.random_non_queries:
        filler = labels == IGNORE
        filler[:, : 2 * n] = False
        inputs[filler] = rng.integers(0, vocab, size=int(filler.sum()))
    return {"inputs": inputs, "labels": labels, "distance": distance}


class MqarTask(SeededTask):
    """Multi-query associative recall (Zoology), generated on the fly from the seed."""

    name = "mqar"
    state_format = "miraslab.mqar/1"

    def examples(self, rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
        return multiquery_ar(self.params, rng, rows)


@miraslab.hookimpl
def register_tasks(register):
    register("mqar", MqarTask, MqarParams)
