"""Packing: documents become one token stream, cut into rows of ``seq_len + 1`` tokens.

Each document contributes its tokens followed by the separator (end-of-document) token,
so the separator stands between every two documents and no boundary is lost.  Rows are
consecutive, non-overlapping slices of the stream: every token is used exactly once, and a
document that does not fit continues at the start of the next row.

Process invariance: every process walks the same global stream and keeps only its own
rows (``rank_rows``); rows of other processes are skipped without building them.  The
cost is that each process tokenises the whole global batch, which is cheap next to a
training step; the gain is that the data never depends on the number of processes.

Exact resume: only the document being consumed can be partly used, so the whole state is
that document's position in the :class:`DocumentOrder` and how many of its tokens are
used.  Restoring re-reads and re-tokenises that one document (tokenisation is
deterministic), so the state stays a few numbers however long the document is.  The state
is the same on every process, and a run may resume with another number of processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

import torch

from ..errors import RecipeError
from .document_order import DocumentOrder, Position
from .task import Batches, rank_rows

STATE_FORMAT = "miraslab.packed-documents/1"


Encoder = Callable[[list[str]], list[list[int]]]  # texts -> their token ids, one list each

# documents tokenised together: a batch lets the tokenizer use several threads, and reading
# ahead is free for the state, which names only the document being consumed
LOOKAHEAD_DOCUMENTS = 32


class PackedTokens:
    """The documents of an order as one stream of tokens, each followed by the separator."""

    def __init__(
        self,
        order: DocumentOrder,
        encode: Encoder,
        separator: int,
        *,
        position: Position | None = None,
        used: int = 0,
    ):
        self._encode = encode
        self._separator = separator
        self._documents = order.documents(position)
        self._ahead: deque[tuple[Position, list[int]]] = deque()
        self._position = position
        self._tokens: list[int] = []
        self._used = 0
        if position is not None:  # the document the saved stream stopped inside
            found, self._tokens = self._next_document()
            if found != position or used > len(self._tokens):
                raise RecipeError(
                    [
                        "data: the saved data state does not fit these documents "
                        "(did the dataset, its files or the tokenizer change since the checkpoint?)"
                    ]
                )
            self._used = used

    def take(self, n: int) -> list[int]:
        """The next ``n`` tokens."""
        out: list[int] = []
        self._walk(n, out)
        return out

    def skip(self, n: int) -> None:
        """Move past the next ``n`` tokens without building them."""
        self._walk(n, None)

    def state(self) -> dict[str, Any]:
        return {"position": list(self._position) if self._position else None, "used": self._used}

    def _walk(self, n: int, out: list[int] | None) -> None:
        while n > 0:
            if self._used == len(self._tokens):
                self._position, self._tokens = self._next_document()
                self._used = 0
            step = min(n, len(self._tokens) - self._used)
            if out is not None:
                out.extend(self._tokens[self._used : self._used + step])
            self._used += step
            n -= step

    def _next_document(self) -> tuple[Position, list[int]]:
        """The next document's position and tokens, separator included."""
        if not self._ahead:
            batch = list(islice(self._documents, LOOKAHEAD_DOCUMENTS))  # the order never ends
            encoded = self._encode([text for _, text in batch])
            self._ahead.extend(
                (position, [*ids, self._separator]) for (position, _), ids in zip(batch, encoded, strict=True)
            )
        return self._ahead.popleft()


class PackedBatches(Batches):
    """This process's rows of each global batch of packed documents.

    A saved state resumes the token stream where it stopped, whatever ``seq_len``,
    ``batch_size`` and ``world_size`` are now (a TNT stage may change them); the split,
    the seed and the data settings must be the ones it was saved with.
    """

    def __init__(
        self,
        order: DocumentOrder,
        encode: Encoder,
        separator: int,
        *,
        seq_len: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        state: dict[str, Any] | None = None,
        fingerprint: str = "",
    ):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        self._rows = rank_rows(batch_size, rank, world_size)
        self.order = order
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.fingerprint = fingerprint
        self._steps = 0
        position: Position | None = None
        used = 0
        if state is not None:
            self._check_state(state)
            if state["position"] is not None:
                epoch, cursor, index = state["position"]
                position = (int(epoch), int(cursor), int(index))
            used = int(state["used"])
            self._steps = int(state["steps"])
        self._tokens = PackedTokens(order, encode, separator, position=position, used=used)

    def __next__(self) -> torch.Tensor:
        row = self.seq_len + 1
        self._tokens.skip(self._rows.start * row)
        mine = [self._tokens.take(row) for _ in range(self._rows.stop - self._rows.start)]
        self._tokens.skip((self.batch_size - self._rows.stop) * row)
        self._steps += 1
        return torch.tensor(mine, dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        """JSON data; equal on every process.  ``steps`` counts global batches so far."""
        return {
            "format": STATE_FORMAT,
            "split": self.order.split,
            "seed": self.order.seed,
            "fingerprint": self.fingerprint,
            "steps": self._steps,
            **self._tokens.state(),
        }

    def _check_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise RecipeError(
                [f"data: a saved data state of format {state.get('format')!r} cannot resume packed documents"]
            )
        saved = (state["split"], state["seed"])
        if saved != (self.order.split, self.order.seed):
            raise RecipeError(
                [
                    f"data: the saved data state is for split {saved[0]!r} with seed {saved[1]}, "
                    f"not split {self.order.split!r} with seed {self.order.seed}; resume with the same seed"
                ]
            )
        if state["fingerprint"] != self.fingerprint:
            raise RecipeError(
                [
                    "data.task: the data settings or the tokenizer changed since this data state was saved, "
                    "so its position means nothing here; restore them, or start the data from the beginning"
                ]
            )
