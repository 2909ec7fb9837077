"""Which document comes next: the train/val split, seeded shuffling, epochs, and positions.

Split: a document is held out for validation when a stable hash of its text (BLAKE2b)
falls below ``val_fraction``.  The split needs no count of the documents (it works on a
stream), does not depend on the seed or the file layout, and an exact duplicate can never
sit on both sides.

Order of epoch e: the shards in a permutation seeded by (seed, e); inside a shard,
consecutive windows of ``shuffle_buffer`` documents, each permuted by
(seed, e, shard, window).  When the data runs out the next epoch starts, reshuffled.

Position (e, c, k): epoch e, the c-th shard of that epoch's order, the k-th document of
that shard's shuffled stream.  Reading can start at any position, which is what makes
resuming exact; seeking re-reads (without tokenising) at most the part of one shard
before k.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from itertools import count, islice

from .sources import DocumentSource, task_error
from .task import check_split

Position = tuple[int, int, int]


def in_validation(text: str, val_fraction: float) -> bool:
    """Whether a document belongs to the val split (a pure function of its text)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < val_fraction * 2**64


def seeded_rng(*parts: object) -> random.Random:
    """A generator determined by ``parts`` alone (not by Python's per-process hash seed)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


class DocumentOrder:
    """The documents of one split of a source, in a seeded order, epoch after epoch."""

    def __init__(
        self, source: DocumentSource, split: str, *, seed: int, val_fraction: float, shuffle_buffer: int
    ):
        check_split(split)
        self.source = source
        self.split = split
        self.seed = seed
        self.val_fraction = val_fraction
        self.shuffle_buffer = shuffle_buffer

    def documents(self, start: Position | None = None) -> Iterator[tuple[Position, str]]:
        """``(position, text)`` from ``start`` (inclusive; default the very beginning), forever."""
        start_epoch, first_cursor, first_index = start or (0, 0, 0)
        for epoch in count(start_epoch):
            from_beginning = first_cursor == 0 and first_index == 0
            found = False
            shards = self.shard_order(epoch)
            for cursor in range(first_cursor, len(shards)):
                stream = self._shard_stream(epoch, shards[cursor])
                for index, text in enumerate(islice(stream, first_index, None), start=first_index):
                    found = True
                    yield (epoch, cursor, index), text
                first_index = 0
            if from_beginning and not found:
                raise self._empty_split()
            first_cursor = 0

    def epoch_documents(self, epoch: int = 0) -> Iterator[str]:
        """The texts of one epoch, in order (for tokenizer training: no document twice)."""
        for (at_epoch, _, _), text in self.documents((epoch, 0, 0)):
            if at_epoch != epoch:
                return
            yield text

    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(self.source.num_shards))
        seeded_rng("shards", self.seed, epoch).shuffle(order)
        return order

    def _shard_stream(self, epoch: int, shard: int) -> Iterator[str]:
        keep = self._membership()
        kept = (text for text in self.source.documents(shard) if text and keep(text))
        for number, window in enumerate(_windows(kept, self.shuffle_buffer)):
            order = list(range(len(window)))
            seeded_rng("window", self.seed, epoch, shard, number).shuffle(order)
            for i in order:
                yield window[i]

    def _membership(self) -> Callable[[str], bool]:
        fraction = self.val_fraction
        if self.split == "val":
            return lambda text: in_validation(text, fraction)
        return lambda text: not in_validation(text, fraction)

    def _empty_split(self) -> Exception:
        what = self.source.describe()
        if self.split == "val":
            return task_error(
                "val_fraction",
                f"no document of {what} falls in the val split (val_fraction = {self.val_fraction}); "
                "raise val_fraction or use more documents",
            )
        return task_error("dataset", f"{what} gives no training documents (is it empty?)")


def _windows(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while window := list(islice(items, size)):
        yield window
