"""What a layout plugin builds: one block of the model, and the context it is built from.

A layout's factory is called as ``factory(params, context)`` with a :class:`BlockContext`
holding only what a block needs (never the whole recipe).  ``context`` also offers the
standard pieces, so a layout reads as its equation: ``context.attention()``,
``context.memory()``, ``context.feed_forward()``, ``context.norm()``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from ..data.documents import PackedDocuments
from ..memory.layer import MemoryLayer
from ..memory.spec import MemorySpec
from .feed_forward import SwiGLU
from .spec import AttentionSpec, TNTSpec


@attrs.frozen
class BlockContext:
    dim: int
    n_heads: int
    d_ff: int
    norm_eps: float
    dropout: float
    layer_index: int
    n_layers: int
    attention_spec: AttentionSpec
    memory_spec: MemorySpec
    tnt: TNTSpec | None

    def attention(self, window: int | None = None) -> nn.Module:
        """Causal self-attention; ``window`` overrides model.attention.window (0 = full)."""
        from .attention import Attention

        spec = self.attention_spec if window is None else attrs.evolve(self.attention_spec, window=window)
        return Attention(self.dim, self.n_heads, spec)

    def memory(self) -> nn.Module:
        """The model's neural memory: one MemoryLayer, or TNT's global + local memories."""
        if self.tnt is not None:
            from ..memory.hierarchical_memory import HierarchicalMemory

            return HierarchicalMemory(self.dim, self.n_heads, self.memory_spec, self.tnt)
        return MemoryLayer(self.dim, self.n_heads, self.memory_spec)

    def feed_forward(self) -> SwiGLU:
        return SwiGLU(self.dim, self.d_ff, self.dropout)

    def norm(self) -> nn.RMSNorm:
        return nn.RMSNorm(self.dim, eps=self.norm_eps)


class Block(nn.Module):
    """A layout's block: (B, T, dim) -> (B, T, dim), with a decode state.

    A block that sets ``packs_documents`` takes ``documents`` (a PackedDocuments: its rows
    hold packed documents, ``data.reset_at_documents``) and hands it to its parts, so each
    document reads as if alone; the parts say through ``documents_reason`` whether they can.
    A block that does not is given one row per document instead (``data.documents``)."""

    uses_memory: bool = False
    uses_attention: bool = True
    packs_documents: bool = False

    def forward(
        self, x: torch.Tensor, state: Any = None, return_state: bool = False, documents: Any = None
    ) -> Any:
        raise NotImplementedError

    def documents_reason(self) -> str | None:
        """Why this block cannot run packed documents, as a sentence; None when it can."""
        if not self.packs_documents:
            return f"block {type(self).__name__} takes no document starts (packs_documents is False)"
        for module in self.modules():
            reason = getattr(module, "documents_reason", None)
            if module is not self and callable(reason) and (found := reason()) is not None:
                return found
        return None


class TransformerBlock(Block):
    """The pre-norm transformer block both attention baselines use:
    x += Attn(norm(x)); x += FFN(norm(x)), with attention over ``window`` tokens (0: all)."""

    def __init__(self, context: BlockContext, window: int):
        super().__init__()
        self.attn_norm, self.attn = context.norm(), context.attention(window=window)
        self.ffn_norm, self.ffn = context.norm(), context.feed_forward()

    packs_documents = True

    def forward(
        self,
        x: torch.Tensor,
        state: Any = None,
        return_state: bool = False,
        documents: PackedDocuments | None = None,
    ) -> Any:
        # the decode cache only where it is returned: trimming it to the window is a boolean
        # mask, data-dependent, which breaks a compiled training step's graph
        h = self.attn(self.attn_norm(x), cache=state, return_cache=return_state, documents=documents)
        h, cache = h if return_state else (h, None)
        x = x + h
        x = x + self.ffn(self.ffn_norm(x))
        return (x, cache) if return_state else x
