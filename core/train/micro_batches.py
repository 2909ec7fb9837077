"""One optimizer step's batch as the forward passes that make it: micro-batches of
``train.micro_batch_size`` rows, and with ``data.reset_at_documents`` each one's documents run
apart in length buckets (more forward passes, the same sums).  Split on the host, before the
copy to the device."""

from __future__ import annotations

from ..data.batch import TrainingBatch
from ..data.documents import documents_apart_in_buckets
from ..errors import RecipeError


def forward_pieces(
    batch: TrainingBatch, micro_batch_size: int, separator: int | None, buckets: int, exact: bool
) -> list[TrainingBatch]:
    """The pieces of ``batch`` each forward pass takes; ``exact``: exactly ``buckets`` per micro-batch
    (a distributed run, whose processes must run as many passes)."""
    micro = micro_batch_size or batch.rows
    if batch.rows % micro:
        raise RecipeError(
            [
                f"train.micro_batch_size: expected a divisor of the per-process batch ({batch.rows}), got {micro}"
            ]
        )
    return [
        part
        for piece in batch.split(micro)
        for part in documents_apart_in_buckets(piece, separator, buckets, exact=exact)
    ]
