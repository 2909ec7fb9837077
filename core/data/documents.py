"""Documents of a packed row run apart: each as if it were alone in its own row.

The text task packs documents into rows, each followed by the separator (see
``miraslab.data.packing``).  A document here is the separator that opens it followed by its
text: the separator closing one document in the stream is the next one's first token (its
BOS, as in GPT-2), so each document still predicts its own end (the target at its last
token is the separator) and its first text token from a fresh start.  ``doc_start`` (B, T)
is True at those separators.  The tokens at the start of a row that continue a document
from the row before are not a document start (they are marked False); like every row's
first tokens they run from the initial state, as flash-linear-attention's ``cu_seqlens``
treats a row's leading partial document.

Every layer of a miraslab model is causal per token and starts a sequence from its initial
state (attention sees nothing before, every memory is at W_init with its momentum zero,
its short-convolution history empty and its Omega window empty, TNT's shards begin at the
sequence's first token).  So "the document runs alone" is reached exactly, with no change
to any layer, by *unpacking*: each document becomes a row of its own, padded at its end
(the pads come after every real token, so no real token sees them; their targets are
IGNORE).  Chunk grids then start at each document's first token, as when run alone.
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from .batch import IGNORE, TrainingBatch

DOC_START = "doc_start"  # the extras entry: (B, T) bool, True at a document's first token
PAD_TOKEN = 0  # any valid id: a pad sits after its row's real tokens and no target counts it


def mark_documents(batch: TrainingBatch, separator: int) -> TrainingBatch:
    """``batch`` with ``extras["doc_start"]``: True where the input is the separator that opens a document."""
    return TrainingBatch(batch.inputs, batch.targets, {**batch.extras, DOC_START: batch.inputs == separator})


def segment_ids(doc_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each token of ``doc_start`` (B, T), flattened: its segment (a document, or a row's
    leading partial one) and its position inside the segment."""
    starts = doc_start.clone()
    starts[:, 0] = True  # each row's first token opens a segment, marked or not
    flat = starts.flatten()
    segment = flat.long().cumsum(0) - 1
    index = torch.arange(flat.numel(), device=flat.device)
    first = index[flat]  # the flat index where each segment begins
    return segment, index - first[segment]


def split_documents(batch: TrainingBatch) -> TrainingBatch:
    """One row per document of ``batch`` (which holds ``extras["doc_start"]``), padded at the
    end to the longest; the same tokens and targets, so the summed loss is the same sum."""
    doc_start = batch.extras.get(DOC_START)
    if doc_start is None or doc_start.shape != batch.inputs.shape:
        raise ValueError(f"split_documents needs extras[{DOC_START!r}] shaped like the inputs")
    segment, position = segment_ids(doc_start)
    rows, length = int(segment[-1]) + 1, int(position.max()) + 1
    inputs = batch.inputs.new_full((rows, length), PAD_TOKEN)
    targets = batch.targets.new_full((rows, length), IGNORE)
    inputs[segment, position] = batch.inputs.flatten()
    targets[segment, position] = batch.targets.flatten()
    extras = {}
    for name, value in batch.extras.items():  # per-token extras follow their tokens
        if value.shape == batch.inputs.shape:
            extras[name] = value.new_zeros((rows, length))
            extras[name][segment, position] = value.flatten()
    return TrainingBatch(inputs, targets, extras)


def documents_apart(batch: TrainingBatch, separator: int | None) -> TrainingBatch:
    """``batch`` with one row per document when ``separator`` is given (``data.reset_at_documents``), else itself."""
    return batch if separator is None else split_documents(mark_documents(batch, separator))


def padded_share(batch: TrainingBatch) -> float:
    """How many more token positions ``split_documents(batch)`` runs than ``batch`` (0.25: 25 % more)."""
    split = split_documents(batch)
    return split.inputs.numel() / batch.inputs.numel() - 1


def documents_separator(task: object, key: str = "data.reset_at_documents") -> int:
    """The token that opens each document of ``task``'s packed rows; a RecipeError when it marks none."""
    separator = getattr(task, "document_separator", lambda: None)()
    if separator is None:
        raise RecipeError(
            [
                f"{key}: expected a task that packs documents with a separator (e.g. text), got "
                f"{type(task).__name__}, whose rows hold no documents; set {key} = false"
            ]
        )
    return int(separator)
