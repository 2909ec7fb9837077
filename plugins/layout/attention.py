"""Transformer baseline: pre-norm blocks of full causal attention and a SwiGLU MLP."""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.model.block import Block, BlockContext


@attrs.frozen
class AttentionParams:
    pass


class AttentionBlock(Block):
    """x += Attn(norm(x)); x += FFN(norm(x)), attention over the whole causal context."""

    def __init__(self, params: AttentionParams, context: BlockContext):
        super().__init__()
        self.attn_norm, self.attn = context.norm(), context.attention(window=0)
        self.ffn_norm, self.ffn = context.norm(), context.feed_forward()

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False):
        h, cache = self.attn(self.attn_norm(x), cache=state, return_cache=True)
        x = x + h
        x = x + self.ffn(self.ffn_norm(x))
        return (x, cache) if return_state else x


@miraslab.hookimpl
def register_layouts(register):
    register("attention", AttentionBlock, AttentionParams)
