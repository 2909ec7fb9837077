"""Rows that continue: the text stream read in order, for state passing across steps.

With ``[data] carry_state = true`` row b of every training batch continues row b of the step
before: the model carries its state (memory and attention's KV window) from one step to the
next (``miraslab.train.state_passing``), so each row must be the next ``seq_len`` tokens of
one stream.  There are ``batch_size`` streams ("lanes"); lane b reads, in the order's
sequence, the documents whose position hashes to b (each document is read by one lane, once
an epoch), packed with the separator after each document as in ``miraslab.data.packing``.

A row holds ``seq_len + 1`` tokens (inputs and the shifted targets), so consecutive rows of a
lane share one token: the last target of one step is the first input of the next.

As with packed rows, every process walks every lane and keeps its own rows, so the state is
the same on every process and a resume is exact; it names each lane's place (document,
piece, tokens used) and the token it ends on.  A resume must keep ``batch_size``: the lanes
are defined by it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import RecipeError
from .document_order import DocumentOrder, Position
from .packing import DocumentBatches, Encoder, PackedTokens

STATE_FORMAT = "miraslab.streamed-documents/1"


def lane_of(position: Position, seed: int, lanes: int) -> int:
    """The lane that reads the document at ``position``: a stable hash, not Python's."""
    digest = hashlib.blake2b(f"lane/{seed}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % lanes


class LaneOrder:
    """The documents of ``order`` that fall in one lane, in the order's sequence."""

    def __init__(self, order: DocumentOrder, lane: int, lanes: int):
        self.order, self.lane, self.lanes = order, lane, lanes
        self.split, self.seed = order.split, order.seed

    def documents(self, start: Position | None = None) -> Iterator[tuple[Position, str]]:
        # a whole epoch without one of this lane's documents: the split is too small for the lanes
        last_found = start[0] if start else -1
        for at, text in self.order.documents(start):
            if at[0] >= last_found + 2:
                raise RecipeError(
                    [
                        f"data.carry_state: the {self.order.split} split has too few documents to give each of "
                        f"the batch's {self.lanes} rows a stream of its own; lower train.batch_size"
                    ]
                )
            if lane_of(at, self.seed, self.lanes) == self.lane:
                last_found = at[0]
                yield at, text


class StreamedBatches(DocumentBatches):
    """This process's rows of each global batch; row b continues row b of the batch before."""

    state_format = STATE_FORMAT

    def _restore(self, encode: Encoder, separator: int, state: dict[str, Any] | None) -> None:
        saved: list[dict[str, Any]] = [
            {"position": None, "piece": 0, "used": 0, "last": None}
        ] * self.batch_size
        if state is not None:
            saved = self._check_state(state)
            self._steps = int(state["steps"])
        self._lanes = []
        self._last: list[int | None] = []
        for lane, at in enumerate(saved):
            position = tuple(int(x) for x in at["position"]) if at["position"] is not None else None
            self._lanes.append(
                PackedTokens(
                    LaneOrder(self.order, lane, self.batch_size),
                    encode,
                    separator,
                    position=position,  # type: ignore[arg-type]
                    piece=int(at["piece"]),
                    used=int(at["used"]),
                )
            )
            self._last.append(at["last"])

    def __next__(self) -> torch.Tensor:
        rows = []
        for lane, tokens in enumerate(self._lanes):
            last = self._last[lane]
            row = tokens.take(self.seq_len + 1) if last is None else [last, *tokens.take(self.seq_len)]
            self._last[lane] = row[-1]
            rows.append(row)
        self._steps += 1
        return torch.tensor(rows[self._rows], dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        """JSON data, the same on every process: every lane's place and last token."""
        return self._state_head() | {
            "lanes": [
                tokens.state() | {"last": last} for tokens, last in zip(self._lanes, self._last, strict=True)
            ],
        }

    def _check_state(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise RecipeError(
                [
                    f"data.carry_state: the saved data state ({found!r}) is not of streamed rows; "
                    "a run cannot turn carry_state on or off when it resumes"
                ]
            )
        if (state.get("split"), state.get("seed")) != (self.order.split, self.order.seed):
            raise RecipeError(
                ["data: the saved data state is for another split or seed; resume with the same seed"]
            )
        if state.get("fingerprint") != self.fingerprint:
            raise RecipeError(
                ["data.task: the data settings or the tokenizer changed since this data state was saved"]
            )
        lanes = state.get("lanes")
        if not isinstance(lanes, list) or len(lanes) != self.batch_size:
            count = len(lanes) if isinstance(lanes, list) else "no"
            raise RecipeError(
                [
                    f"train.batch_size: the saved streams are {count} rows, not {self.batch_size}; with "
                    "data.carry_state a resume keeps the batch size"
                ]
            )
        return lanes
