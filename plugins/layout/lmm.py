"""LMM (Titans sec. 4.3): the long-term memory alone as the sequence mixer, no attention."""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import Block, BlockContext


@attrs.frozen
class LMMParams:
    pass


class LMMBlock(Block):
    """x += Mem(norm(x)); x += FFN(norm(x))."""

    uses_memory = True
    packs_documents = True  # documents reach the memory
    uses_attention = False

    def __init__(self, params: LMMParams, context: BlockContext):
        super().__init__()
        self.memory_norm, self.memory = context.norm(), context.memory()
        self.ffn_norm, self.ffn = context.norm(), context.feed_forward()

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False, documents=None):
        h, memory_state = self.memory(self.memory_norm(x), state, return_state=True, documents=documents)
        x = x + h
        x = x + self.ffn(self.ffn_norm(x))
        return (x, memory_state) if return_state else x


@miraslab.hookimpl
def register_layouts(register):
    register("lmm", LMMBlock, LMMParams)
