"""MAL, memory as a layer (Titans sec. 4.3): the memory first, then sliding-window attention.

x += Mem(norm(x));   x += SWA(norm(x));   x += FFN(norm(x))
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import Block, BlockContext


@attrs.frozen
class MALParams:
    pass


class MALBlock(Block):
    """Memory layer, then attention layer, then MLP."""

    uses_memory = True
    packs_documents = True  # documents reach the memory and the attention

    def __init__(self, params: MALParams, context: BlockContext):
        super().__init__()
        self.memory_norm, self.memory = context.norm(), context.memory()
        self.attn_norm, self.attn = context.norm(), context.attention()
        self.ffn_norm, self.ffn = context.norm(), context.feed_forward()

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False, documents=None):
        memory_state, cache = state if state is not None else (None, None)
        h, memory_state = self.memory(
            self.memory_norm(x), memory_state, return_state=True, documents=documents
        )
        x = x + h
        h = self.attn(self.attn_norm(x), cache=cache, return_cache=return_state, documents=documents)
        h, cache = h if return_state else (h, None)  # a cache only to return (see mag.py)
        x = x + h
        x = x + self.ffn(self.ffn_norm(x))
        return (x, (memory_state, cache)) if return_state else x


@miraslab.hookimpl
def register_layouts(register):
    register("mal", MALBlock, MALParams)
