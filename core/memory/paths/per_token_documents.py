"""Packed documents through the per-token chunked path, each as if alone, without padding rows.

``data.reset_at_documents`` today unpacks a row's documents into rows of their own, padded
to the longest (``miraslab.data.documents``).  For the per-token memory that is not needed:
each document is laid on the chunk grid of its own row (it starts a chunk; its last chunk is
zero-padded: a padded token has k = 0, beta = 0 and alpha = 1, the identity step), and the
chunk loop of ``chunked_per_token`` starts such a chunk again from the initial state.  A row
grows by less than one chunk per document, instead of every document growing to the longest
(flash-linear-attention's ``cu_seqlens`` form, which runs instead where its kernels do, needs
no grid at all: ``fla_delta.fla_documents``).

The row's first tokens, before its first marked start, are a document too (as in
``data.documents``: a row's leading partial document runs from the initial state), unless a
state is carried in (``data.carry_state``: the row continues the row of the call before):
then the leading document continues from that state, every later one restarts from the
initial state (W_init, momentum zero), and the state handed on is the one after the row's
last document.  A row whose first token is itself marked a start restarts at once.
"""

from __future__ import annotations

import dataclasses

import torch

from ...data.documents import PackedDocuments
from ..rule.axes import Gates
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from . import fla_delta
from .chunked_per_token import chunked_per_token
from .tokens import Tokens


@dataclasses.dataclass(frozen=True)
class DocumentLayout:
    """Where each token of a (B, T) packed batch sits on the chunk grid."""

    index: torch.Tensor  # (B, T) long: the token's position in its laid-out row
    restart: torch.Tensor  # (B, chunks) bool: the chunk opens a document
    length: int  # laid-out row length, a multiple of the chunk

    def spread(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, ...) -> (B, H, length, ...), zeros where no token sits."""
        index = self.index[:, None].expand(x.shape[0], x.shape[1], -1)
        index = index.reshape(*index.shape, *[1] * (x.dim() - 3)).expand_as(x)
        out = x.new_zeros(*x.shape[:2], self.length, *x.shape[3:])
        return out.scatter(2, index, x)

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, length, d) -> (B, H, T, d): each token's own position back."""
        index = self.index[:, None, :, None].expand(y.shape[0], y.shape[1], -1, y.shape[-1])
        return y.gather(2, index)


def document_layout(doc_start: torch.Tensor, chunk: int) -> DocumentLayout:
    """Each document of ``doc_start`` (B, T; True at a document's first token) at a chunk start,
    its last chunk padded."""
    batch, seq = doc_start.shape
    starts = doc_start.clone()
    starts[:, 0] = True
    positions = torch.arange(seq, device=doc_start.device).expand(batch, seq)
    first = torch.cummax(torch.where(starts, positions, 0), dim=1).values  # its document's first token
    ends = torch.cat([starts[:, 1:], torch.ones_like(starts[:, :1])], dim=1)  # the document's last token
    pad = torch.where(ends, (-(positions - first + 1)) % chunk, 0)  # after a document's last token
    index = positions + torch.cumsum(pad, dim=1) - pad  # pads of the documents before it
    length = int((index[:, -1] + 1 + pad[:, -1]).max())
    restart = torch.zeros(batch, length // chunk, dtype=torch.bool, device=doc_start.device)
    rows, tokens = starts.nonzero(as_tuple=True)
    restart[rows, index[rows, tokens] // chunk] = True
    return DocumentLayout(index, restart, length)


def per_token_documents(
    rule: MemoryRule,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    doc_start: torch.Tensor | PackedDocuments,
    chunk_size: int,
    return_state: bool = False,
    kernel: str = "native",
    state: MemoryState | None = None,
) -> torch.Tensor | tuple[torch.Tensor, MemoryState]:
    """Reads (B, H, T, d_v) of a per-token memory restarted from its initial state at every
    document of ``doc_start`` (B, T bool, or the pass's PackedDocuments, whose layout is then
    computed once for every layer): each document's reads as if it ran alone.  With
    ``return_state``, also the state after each row's last document (at its last token: with
    momentum the pads after it on the grid are no identity steps).  ``kernel``: as ``model.memory.kernel``; where flash-linear-attention
    runs, the documents go through its ``cu_seqlens`` form instead (``fla_delta.fla_documents``).
    ``state``: the carried (closed) state each row's leading document continues, where the
    row's first token is not marked a start (a plain (B, T) ``doc_start`` marks the row's
    first tokens as given; a PackedDocuments has kept them in ``continues``)."""
    documents = doc_start if isinstance(doc_start, PackedDocuments) else PackedDocuments(doc_start)
    continues = documents.continues if state is not None else None
    initial = rule.initial_state(q.shape[0])
    found = fla_delta.choose(kernel, rule, q, None, "chunked")
    if found is not None:
        carried = (state, continues) if state is not None else None
        y, end = fla_delta.fla_documents(found, rule, q, k, v, gates, documents.starts, carried)
        return (y, end) if return_state else y
    layout = documents.cached(
        ("chunk_layout", chunk_size), lambda: document_layout(documents.starts, chunk_size)
    )
    restart = layout.restart
    if continues is not None:  # a continuing row's first chunk starts from the carried state
        restart = torch.cat([(~continues)[:, None], restart[:, 1:]], dim=1)
    laid = {name: layout.spread(g) for name, g in gates.items()}  # alpha = 1, theta = 0 on pads
    y, end = chunked_per_token(
        rule,
        Tokens(layout.spread(q), layout.spread(k), layout.spread(v), laid),
        state if state is not None else initial,
        chunk_size,
        restart=restart,
        reset=initial,
        last_token=layout.index[:, -1],  # the row's trailing pads are no identity steps under momentum
    )
    y = layout.gather(y)
    return (y, end) if return_state else y
