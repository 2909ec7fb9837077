"""Packing: documents become one token stream, cut into rows of ``seq_len + 1`` tokens.

Each document contributes its tokens followed by the separator (end-of-document) token,
so the separator stands between every two documents and no boundary is lost.  Rows are
consecutive, non-overlapping slices of the stream: every token is used exactly once, and a
document that does not fit continues at the start of the next row.

Process invariance: every process walks the same global stream and keeps only its own
rows (``rank_rows``); rows of other processes are skipped without building them.  The
cost is that each process tokenises the whole global batch, which is cheap next to a
training step; the gain is that the data never depends on the number of processes.

Bounded memory: a document longer than ``MAX_PIECE_CHARS`` is tokenised in pieces (see
``document_pieces``), and the pieces tokenised ahead are bounded in number and characters,
so the tokens held at once do not grow with the length of a document.

Exact resume: only the piece being consumed can be partly used, so the whole state is its
document's position in the :class:`DocumentOrder`, the piece's index and how many of its
tokens are used.  Restoring re-reads that one document and re-tokenises that one piece
(tokenisation is deterministic), so the state stays a few numbers however long the
document is.  The state is the same on every process, and a run may resume with another
number of processes.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import RecipeError
from .document_order import DocumentOrder, Position
from .task import Batches, rank_rows

STATE_FORMAT = "miraslab.packed-documents/1"
_STATE_KEYS = ("split", "seed", "fingerprint", "steps", "position", "used")


Encoder = Callable[[list[str]], list[list[int]]]  # texts -> their token ids, one list each

# pieces tokenised together: a batch lets the tokenizer use several threads, and reading
# ahead is free for the state, which names only the piece being consumed.  Bounded both in
# pieces and in characters, so one long document is never encoded many times over (a corpus
# of one document wraps onto itself) and the tokens held ahead stay a few MB.
LOOKAHEAD_PIECES = 32
LOOKAHEAD_CHARS = 1 << 20
# a document longer than this is tokenised in pieces of at most this many characters: memory
# per piece is bounded, and the pieces' tokens follow each other with no separator between
MAX_PIECE_CHARS = 1 << 18
# where a piece may be cut: just before a run of whitespace, which the byte-level
# pre-tokenizer never joins to the word before it, so the pieces' tokens are the whole
# document's tokens; a piece with no whitespace in its last tenth is cut hard
_CUT = re.compile(r"(?<=\S)\s")


def document_pieces(text: str, limit: int = MAX_PIECE_CHARS) -> list[tuple[int, int]]:
    """``(start, end)`` character spans covering ``text`` in order, each at most ``limit`` long."""
    spans, start = [], 0
    while len(text) - start > limit:
        end = start + limit
        cuts = [m.start() for m in _CUT.finditer(text, end - max(limit // 10, 1), end)]
        end = cuts[-1] if cuts and cuts[-1] > start else end
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    return spans


Piece = tuple[Position, int]  # a document's position and the index of a piece of it


class PackedTokens:
    """The documents of an order as one stream of tokens, each followed by the separator."""

    def __init__(
        self,
        order: DocumentOrder,
        encode: Encoder,
        separator: int,
        *,
        position: Position | None = None,
        piece: int = 0,
        used: int = 0,
    ):
        self._encode = encode
        self._separator = separator
        self._pieces = self._piece_texts(order, position, piece)
        self._ahead: deque[tuple[Piece, list[int]]] = deque()
        self._at: Piece | None = (position, piece) if position is not None else None
        self._tokens: list[int] = []
        self._used = 0
        if position is not None:  # the piece the saved stream stopped inside
            found, self._tokens = self._next_piece()
            if found != (position, piece) or used > len(self._tokens):
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
        position, piece = self._at if self._at else (None, 0)
        return {"position": list(position) if position else None, "piece": piece, "used": self._used}

    def _walk(self, n: int, out: list[int] | None) -> None:
        while n > 0:
            if self._used == len(self._tokens):
                self._at, self._tokens = self._next_piece()
                self._used = 0
            step = min(n, len(self._tokens) - self._used)
            if out is not None:
                out.extend(self._tokens[self._used : self._used + step])
            self._used += step
            n -= step

    @staticmethod
    def _piece_texts(
        order: DocumentOrder, position: Position | None, first_piece: int
    ) -> Iterator[tuple[Piece, str, bool]]:
        """``((position, piece), text, last piece of its document)``, forever; one document held at a time."""
        for at, text in order.documents(position):
            spans = document_pieces(text)
            begin = first_piece if at == position else 0
            for index in range(min(begin, len(spans) - 1), len(spans)):
                start, end = spans[index]
                yield (at, index), text[start:end], index == len(spans) - 1

    def _next_piece(self) -> tuple[Piece, list[int]]:
        """The next piece's place and tokens, the separator after a document's last piece."""
        if not self._ahead:
            batch, chars = [], 0
            while len(batch) < LOOKAHEAD_PIECES and (not batch or chars < LOOKAHEAD_CHARS):
                batch.append(next(self._pieces))  # the order never ends
                chars += len(batch[-1][1])
            encoded = self._encode([text for _, text, _ in batch])
            self._ahead.extend(
                (at, [*ids, self._separator] if last else list(ids))
                for (at, _, last), ids in zip(batch, encoded, strict=True)
            )
        return self._ahead.popleft()


class DocumentBatches(Batches):
    """What packed and streamed rows share: the document order, the rows' shape, this
    process's rows of each global batch, the count of global batches and the saved state's head."""

    state_format: str

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
        self.order, self.seq_len, self.batch_size, self.fingerprint = order, seq_len, batch_size, fingerprint
        self._steps = 0
        self._restore(encode, separator, state)

    @abstractmethod
    def _restore(self, encode: Encoder, separator: int, state: dict[str, Any] | None) -> None:
        """Open the token stream(s): at a saved ``state`` (checked first), else at the start."""

    def _state_head(self) -> dict[str, Any]:
        return {
            "format": self.state_format,
            "split": self.order.split,
            "seed": self.order.seed,
            "fingerprint": self.fingerprint,
            "steps": self._steps,
        }


class PackedBatches(DocumentBatches):
    """This process's rows of each global batch of packed documents.

    A saved state resumes the token stream where it stopped, whatever ``seq_len``,
    ``batch_size`` and ``world_size`` are now (a TNT stage may change them); the split,
    the seed and the data settings must be the ones it was saved with.
    """

    state_format = STATE_FORMAT

    def _restore(self, encode: Encoder, separator: int, state: dict[str, Any] | None) -> None:
        position: Position | None = None
        piece, used = 0, 0
        if state is not None:
            self._check_state(state)
            if state["position"] is not None:
                epoch, cursor, index = state["position"]
                position = (int(epoch), int(cursor), int(index))
            piece = int(state.get("piece", 0))  # states saved before pieces existed: piece 0
            used = int(state["used"])
            self._steps = int(state["steps"])
        self._tokens = PackedTokens(self.order, encode, separator, position=position, piece=piece, used=used)

    def __next__(self) -> torch.Tensor:
        row = self.seq_len + 1
        self._tokens.skip(self._rows.start * row)
        mine = [self._tokens.take(row) for _ in range(self._rows.stop - self._rows.start)]
        self._tokens.skip((self.batch_size - self._rows.stop) * row)
        self._steps += 1
        return torch.tensor(mine, dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        """JSON data; equal on every process.  ``steps`` counts global batches so far."""
        return self._state_head() | self._tokens.state()

    def _check_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise RecipeError([f"data: a saved data state must be a table, got {type(state).__name__}"])
        if state.get("format") != STATE_FORMAT:
            raise RecipeError(
                [f"data: a saved data state of format {state.get('format')!r} cannot resume packed documents"]
            )
        missing = sorted(set(_STATE_KEYS) - set(state))
        if missing:
            raise RecipeError(
                [f"data: the saved data state lacks {', '.join(missing)}; it was not saved by miraslab"]
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
