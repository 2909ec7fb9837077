"""One optimizer step's batch as the forward passes that make it: micro-batches of
``train.micro_batch_size`` rows, and with ``data.reset_at_documents`` either each one packed
with its documents' starts marked (``packed``: a model whose every part restarts at them,
``LanguageModel.documents_reason``) or its documents run apart in length buckets (more forward
passes, the same sums).  Split on the host, before the copy to the device."""

from __future__ import annotations

from typing import Any

from ..data.batch import TrainingBatch
from ..data.documents import documents_apart_in_buckets, mark_documents
from ..errors import RecipeError


def packs_documents(model: Any, was_packed: bool, first: bool, progress: Any) -> bool:
    """Whether ``model`` runs ``data.reset_at_documents`` packed (every part restarts at the
    starts it is given) or apart, said in one line at the first stage and whenever it changes."""
    reason = model.documents_reason()
    if first or was_packed != (reason is None):
        progress.event(
            "documents packed, each restarted at its start (data.reset_at_documents)"
            if reason is None
            else f"documents run apart, one row each (data.reset_at_documents): {reason}"
        )
    return reason is None


def forward_pieces(
    batch: TrainingBatch,
    micro_batch_size: int,
    separator: int | None,
    buckets: int,
    exact: bool,
    packed: bool = False,
) -> list[TrainingBatch]:
    """The pieces of ``batch`` each forward pass takes; ``exact``: exactly ``buckets`` per micro-batch
    (a distributed run, whose processes must run as many passes); ``packed``: the documents stay
    in their rows, ``extras["doc_start"]`` marking where each opens."""
    micro = micro_batch_size or batch.rows
    if batch.rows % micro:
        raise RecipeError(
            [
                f"train.micro_batch_size: expected a divisor of the per-process batch ({batch.rows}), got {micro}"
            ]
        )
    if packed and separator is not None:
        return [mark_documents(piece, separator) for piece in batch.split(micro)]
    return [
        part
        for piece in batch.split(micro)
        for part in documents_apart_in_buckets(piece, separator, buckets, exact=exact)
    ]
