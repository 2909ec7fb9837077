"""A language model assembled from a recipe: embeddings, n_layers blocks of the recipe's
layout, a final RMSNorm and a tied or untied head.

    model = miraslab.build_model(recipe)          # or a recipe path, or a ModelSpec
    logits = model(input_ids)                     # (batch, seq, vocab)
    logits, state = model(prompt, return_state=True)
    logits, state = model(next_ids, state=state, return_state=True)   # decode, O(1) state per memory
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RecipeError
from ..registry import get_registry
from .block import BlockContext
from .spec import ModelSpec


@dataclasses.dataclass
class DecodeState:
    """Every block's state (memory states, KV caches) and the number of tokens seen."""

    blocks: list[Any]
    position: int = 0


class LanguageModel(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        registry = get_registry()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        layout = registry.get("layout", spec.layout.name)
        self.blocks = nn.ModuleList(
            layout.build(spec.layout.params, context=self._context(spec, index))
            for index in range(spec.n_layers)
        )
        if spec.attention.branch_dropout and not self.uses_memory:
            raise RecipeError(
                [
                    f"model.attention.branch_dropout: drops the attention's context so that a memory answers; "
                    f"layout {spec.layout.name!r} has no memory (use a hybrid: mag, mal), or set it to 0"
                ]
            )
        self.norm = nn.RMSNorm(spec.d_model, eps=spec.norm_eps)
        self.head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=spec.init_std)
        if spec.tie_embeddings:
            self.head.weight = self.embed.weight
        else:
            nn.init.normal_(self.head.weight, std=spec.init_std)

    @staticmethod
    def _context(spec: ModelSpec, index: int) -> BlockContext:
        return BlockContext(
            dim=spec.d_model,
            n_heads=spec.n_heads,
            d_ff=spec.d_ff,
            norm_eps=spec.norm_eps,
            dropout=spec.dropout,
            layer_index=index,
            n_layers=spec.n_layers,
            attention_spec=spec.attention,
            memory_spec=spec.memory,
            tnt=spec.tnt,
        )

    @property
    def uses_memory(self) -> bool:
        return any(getattr(block, "uses_memory", False) for block in self.blocks)

    def forward(
        self, input_ids: torch.Tensor, state: DecodeState | None = None, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, DecodeState]:
        x = self.embed(input_ids)
        if state is None and not return_state:
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))
        states = []
        for index, block in enumerate(self.blocks):
            x, block_state = block(x, state.blocks[index] if state is not None else None, return_state=True)
            states.append(block_state)
        position = (state.position if state is not None else 0) + input_ids.shape[1]
        return self.head(self.norm(x)), DecodeState(states, position)


def build_model(recipe: Any) -> LanguageModel:
    """A model from a Recipe or a ModelSpec.

    A recipe file is ``miraslab.build_model``'s (``miraslab.recipe.build``): this module never
    loads recipes, because recipe validation builds models to count their parameters."""
    if isinstance(recipe, (str, Path)):
        raise TypeError(f"a recipe file is miraslab.build_model's to load, not this one's: {recipe}")
    spec = recipe if isinstance(recipe, ModelSpec) else recipe.model
    return LanguageModel(spec)
