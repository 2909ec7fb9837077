"""Documents of a packed row run apart: each as if it were alone in its own row.

The text task packs documents into rows, each followed by the separator (see
``miraslab.data.packing``).  A document here is the separator that opens it followed by its
text: the separator closing one document in the stream is the next one's first token (its
BOS, as in GPT-2), so each document still predicts its own end (the target at its last
token is the separator) and its first text token from a fresh start.  ``doc_start`` (B, T)
is True at those separators.  The tokens at the start of a row that continue a document
from the row before are not a document start (they are marked False); like every row's
first tokens they run from the initial state, as flash-linear-attention's ``cu_seqlens``
treats a row's leading partial document, unless the model carries a state into the row
(``data.carry_state``, packed only): then they continue it (``PackedDocuments.continues``).

Where every part of the model can restart at a document's start (a per-token memory, see
``LanguageModel.documents_reason``) the rows stay packed and the model is given the starts
(:class:`PackedDocuments`): a block-diagonal attention mask, the memory restarted on its chunk
grid.  Everything else runs the documents apart, as follows.

Every layer of a miraslab model is causal per token and starts a sequence from its initial
state (attention sees nothing before, every memory is at W_init with its momentum zero,
its short-convolution history empty and its Omega window empty, TNT's shards begin at the
sequence's first token).  So "the document runs alone" is reached exactly, with no change
to any layer, by *unpacking*: each document becomes a row of its own, padded at its end
(the pads come after every real token, so no real token sees them; their targets are
IGNORE).  Chunk grids then start at each document's first token, as when run alone.

Padding every document to the batch's longest wastes most of the positions when documents
are short (+290 % at a median of 64 tokens in rows of 512).  ``length_buckets`` groups the
documents by length into a few batches, each padded to its own longest: the trainer runs
them as consecutive forward and backward passes of one step, which changes no sum, only the
positions computed (benchmarks/document_reset.py).
"""

from __future__ import annotations

import math

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


class PackedDocuments:
    """The documents of packed rows, for a model that runs them packed (each as if alone,
    without one row per document): ``starts`` (B, T) bool, True at a document's first token;
    each row's first token opens one too (a row's leading partial document).

    With a carried state (``data.carry_state``: the rows continue the rows of the call before)
    a row's leading document continues from that state unless its first token was marked a
    start itself: ``continues`` (B,) bool says which rows' leading documents do.

    What the layers ask of it is computed once per forward pass and shared by every layer:
    ``segment`` (attention's block-diagonal mask), ``position`` (a short convolution's reach)
    and ``cached`` (a memory's chunk-grid layout)."""

    def __init__(self, starts: torch.Tensor):
        if starts.dim() != 2 or starts.dtype != torch.bool:
            raise ValueError(
                f"document starts must be a (batch, seq) bool tensor, got {tuple(starts.shape)} {starts.dtype}"
            )
        self.starts = starts.clone()
        self.continues = ~starts[:, 0]  # before the row's first token is marked below
        self.starts[:, :1] = True
        self._cache: dict[object, object] = {}

    @property
    def shape(self) -> torch.Size:
        return self.starts.shape

    def cached(self, key: object, make):
        """``make()``, computed on the first call for ``key`` and kept for this pass."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def segment(self) -> torch.Tensor:
        """(B, T) long: each token's document, counted from 0 in its row."""
        return self.cached("segment", lambda: self.starts.long().cumsum(1) - 1)

    @property
    def position(self) -> torch.Tensor:
        """(B, T) long: each token's position inside its document."""

        def make() -> torch.Tensor:
            index = torch.arange(self.starts.shape[1], device=self.starts.device).expand_as(self.starts)
            return index - torch.cummax(torch.where(self.starts, index, 0), dim=1).values

        return self.cached("position", make)


def split_documents(batch: TrainingBatch) -> TrainingBatch:
    """One row per document of ``batch`` (which holds ``extras["doc_start"]``), padded at the
    end to the longest; the same tokens and targets, so the summed loss is the same sum."""
    segment, position = _segments(batch)
    return _gather(batch, segment, position, torch.arange(int(segment[-1]) + 1, device=segment.device))


def length_buckets(batch: TrainingBatch, buckets: int, exact: bool = False) -> list[TrainingBatch]:
    """The documents of ``batch`` (which holds ``extras["doc_start"]``) in at most ``buckets``
    batches, one row per document, grouped by length so each is padded only to its own
    longest; every document is in exactly one.  Fewer buckets are used when more would save
    under a tenth of the positions (each is a pass of its own).  ``exact``: always
    ``min(buckets, batch.rows)``, a count that depends only on ``batch.rows``, so the processes
    of a distributed run make the same number of forward passes (DDP broadcasts buffers and
    FSDP gathers parameters at each)."""
    segment, position = _segments(batch)
    lengths = torch.bincount(segment).tolist()
    groups = _partition(lengths, max(1, min(buckets, batch.rows)), exact)
    return [_gather(batch, segment, position, torch.tensor(g, device=segment.device)) for g in groups]


def _segments(batch: TrainingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    doc_start = batch.extras.get(DOC_START)
    if doc_start is None or doc_start.shape != batch.inputs.shape:
        raise ValueError(f"split_documents needs extras[{DOC_START!r}] shaped like the inputs")
    return segment_ids(doc_start)


def _gather(
    batch: TrainingBatch, segment: torch.Tensor, position: torch.Tensor, keep: torch.Tensor
) -> TrainingBatch:
    """Rows for the segments ``keep`` (in that order), padded at the end to the longest of them."""
    row_of = segment.new_full((int(segment[-1]) + 1,), -1)
    row_of[keep] = torch.arange(keep.numel(), device=keep.device)
    row = row_of[segment]
    mine = row >= 0
    row, position = row[mine], position[mine]
    rows, length = keep.numel(), int(position.max()) + 1
    inputs = batch.inputs.new_full((rows, length), PAD_TOKEN)
    targets = batch.targets.new_full((rows, length), IGNORE)
    inputs[row, position] = batch.inputs.flatten()[mine]
    targets[row, position] = batch.targets.flatten()[mine]
    extras = {}
    for name, value in batch.extras.items():  # per-token extras follow their tokens
        if value.shape == batch.inputs.shape:
            extras[name] = value.new_zeros((rows, length))
            extras[name][row, position] = value.flatten()[mine]
    return TrainingBatch(inputs, targets, extras)


_GRAIN = 16  # lengths are grouped at this granularity: the partition then costs O(k (T/16)^2)


def _partition(lengths: list[int], k: int, exact: bool = False) -> list[list[int]]:
    """Segment indices in at most ``k`` groups of similar length that minimise the padded
    positions, sum over groups of rows x longest (a dynamic programme over the sorted lengths,
    rounded up to ``_GRAIN``): the fewest groups within 10 % of the best, or exactly ``k``
    (``k <= len(lengths)``) with ``exact``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sizes = sorted({math.ceil(n / _GRAIN) for n in lengths}, reverse=True)  # distinct rounded lengths
    index = {size: i for i, size in enumerate(sizes)}
    count = [0] * len(sizes)
    for n in lengths:
        count[index[math.ceil(n / _GRAIN)]] += 1
    prefix = [0]
    for c in count:
        prefix.append(prefix[-1] + c)
    m, most = len(sizes), min(k, len(sizes))
    # cost[j][i]: the least padded area of the first i sizes in j groups; a group spans sizes
    # a..i-1 and pads its rows to sizes[a]
    cost = [[math.inf] * (m + 1) for _ in range(most + 1)]
    cut = [[0] * (m + 1) for _ in range(most + 1)]
    cost[0][0] = 0
    for j in range(1, most + 1):
        for i in range(j, m + 1):
            for a in range(j - 1, i):
                c = cost[j - 1][a] + (prefix[i] - prefix[a]) * sizes[a]
                if c < cost[j][i]:
                    cost[j][i], cut[j][i] = c, a
    used = most if exact else next(j for j in range(1, most + 1) if cost[j][m] <= 1.1 * cost[most][m])
    bounds, i = [], m
    for j in range(used, 0, -1):
        bounds.append((cut[j][i], i))
        i = cut[j][i]
    result = [order[prefix[a] : prefix[b]] for a, b in reversed(bounds)]
    while exact and len(result) < k:  # fewer distinct lengths than groups: halve the largest group
        big = max(range(len(result)), key=lambda g: len(result[g]))
        half = len(result[big]) // 2
        result[big : big + 1] = [result[big][:half], result[big][half:]]
    return result


def documents_apart(batch: TrainingBatch, separator: int | None) -> TrainingBatch:
    """``batch`` with one row per document when ``separator`` is given (``data.reset_at_documents``), else itself."""
    return batch if separator is None else split_documents(mark_documents(batch, separator))


def documents_apart_in_buckets(
    batch: TrainingBatch, separator: int | None, buckets: int, exact: bool = False
) -> list[TrainingBatch]:
    """``[batch]``, or with ``separator`` its documents apart in ``length_buckets``."""
    return [batch] if separator is None else length_buckets(mark_documents(batch, separator), buckets, exact)


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
