"""A language model assembled from a recipe: embeddings, n_layers blocks of the recipe's
layout, a final RMSNorm and a tied or untied head.

    model = miraslab.build_model(recipe)          # or a recipe path, or a ModelSpec
    logits = model(input_ids)                     # (batch, seq, vocab)
    logits, state = model(prompt, return_state=True)
    logits, state = model(next_ids, state=state, return_state=True)   # decode, O(1) state per memory
    logits = model(packed_ids, documents=doc_start)   # packed documents, each as if alone

``documents`` (B, T) bool marks each packed document's first token (each row's first token
opens one too): every layer then reads each document as if it ran alone, without one row per
document; ``documents_reason()`` says why a model cannot (then ``data.documents`` unpacks).
With a ``state`` too (``data.carry_state``), each row's leading document continues from it
unless the row's first token is marked; the state returned is the one after each row's last
document::

    logits, state = model(ids, documents=doc_start, return_state=True)
    logits, state = model(next_ids, state=state, documents=next_doc_start, return_state=True)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.documents import PackedDocuments
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

    def documents_reason(self) -> str | None:
        """Why this model cannot run packed documents (each as if alone) in one row, as a
        sentence naming the first block that cannot; None when every block can."""
        for index, block in enumerate(self.blocks):
            reason = block.documents_reason() if hasattr(block, "documents_reason") else "not a Block"
            if reason is not None:
                return f"layer {index} ({self.spec.layout.name}): {reason}"
        return None

    def forward(
        self,
        input_ids: torch.Tensor,
        state: DecodeState | None = None,
        return_state: bool = False,
        documents: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, DecodeState]:
        x = self.embed(input_ids)
        packed = None
        if documents is not None:
            if (reason := self.documents_reason()) is not None:
                raise ValueError(f"LanguageModel: packed documents cannot run here: {reason}")
            if documents.shape != input_ids.shape:
                raise ValueError(
                    f"documents must be shaped like the input ids {tuple(input_ids.shape)}, got {tuple(documents.shape)}"
                )
            packed = PackedDocuments(documents)
        if state is None and not return_state:
            for block in self.blocks:
                x = block(x) if packed is None else block(x, documents=packed)
            return self.head(self.norm(x))
        states = []
        for index, block in enumerate(self.blocks):
            block_state = state.blocks[index] if state is not None else None
            if packed is None:  # a layout that packs no documents need not take the keyword
                x, block_state = block(x, block_state, return_state=True)
            else:
                x, block_state = block(x, block_state, return_state=True, documents=packed)
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
