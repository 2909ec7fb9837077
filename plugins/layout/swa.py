"""Sliding-window attention baseline: each token sees the last model.attention.window tokens."""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.errors import RecipeError
from miraslab.model.block import Block, BlockContext


@attrs.frozen
class SWAParams:
    pass


class SWABlock(Block):
    """x += SWA(norm(x)); x += FFN(norm(x)); the decode cache never exceeds the window."""

    def __init__(self, params: SWAParams, context: BlockContext):
        super().__init__()
        if context.attention_spec.window <= 0:
            raise RecipeError(["model.attention.window: layout swa needs a window >= 1, got 0"])
        self.attn_norm, self.attn = context.norm(), context.attention()
        self.ffn_norm, self.ffn = context.norm(), context.feed_forward()

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False):
        h, cache = self.attn(self.attn_norm(x), cache=state, return_cache=True)
        x = x + h
        x = x + self.ffn(self.ffn_norm(x))
        return (x, cache) if return_state else x


@miraslab.hookimpl
def register_layouts(register):
    register("swa", SWABlock, SWAParams)
