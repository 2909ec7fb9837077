"""Transformer baseline: pre-norm blocks of full causal attention and a SwiGLU MLP."""

from __future__ import annotations

import attrs

import miraslab
from miraslab.api import BlockContext, TransformerBlock


@attrs.frozen
class AttentionParams:
    pass


class AttentionBlock(TransformerBlock):
    """x += Attn(norm(x)); x += FFN(norm(x)), attention over the whole causal context."""

    def __init__(self, params: AttentionParams, context: BlockContext):
        super().__init__(context, window=0)


@miraslab.hookimpl
def register_layouts(register):
    register("attention", AttentionBlock, AttentionParams)
