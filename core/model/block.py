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
    """A layout's block: (B, T, dim) -> (B, T, dim), with a decode state."""

    uses_memory: bool = False
    uses_attention: bool = True

    def forward(self, x: torch.Tensor, state: Any = None, return_state: bool = False) -> Any:
        raise NotImplementedError


class TransformerBlock(Block):
    """The pre-norm transformer block both attention baselines use:
    x += Attn(norm(x)); x += FFN(norm(x)), with attention over ``window`` tokens (0: all)."""

    def __init__(self, context: BlockContext, window: int):
        super().__init__()
        self.attn_norm, self.attn = context.norm(), context.attention(window=window)
        self.ffn_norm, self.ffn = context.norm(), context.feed_forward()

    def forward(self, x: torch.Tensor, state: Any = None, return_state: bool = False) -> Any:
        h = self.attn(self.attn_norm(x), cache=state, return_cache=return_state)  # a cache only to return
        h, cache = h if return_state else (h, None)
        x = x + h
        x = x + self.ffn(self.ffn_norm(x))
        return (x, cache) if return_state else x
