"""Sliding-window attention baseline: each token sees the last model.attention.window tokens."""

from __future__ import annotations

import attrs

import miraslab
from miraslab.api import BlockContext, RecipeError, TransformerBlock


@attrs.frozen
class SWAParams:
    pass


class SWABlock(TransformerBlock):
    """x += SWA(norm(x)); x += FFN(norm(x)); the decode cache never exceeds the window."""

    def __init__(self, params: SWAParams, context: BlockContext):
        window = context.attention_spec.window
        if window <= 0:
            raise RecipeError(["model.attention.window: layout swa needs a window >= 1, got 0"])
        super().__init__(context, window=window)


@miraslab.hookimpl
def register_layouts(register):
    register("swa", SWABlock, SWAParams)
