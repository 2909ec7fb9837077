"""Knocking the memory out for evaluation (memory ablations): is the model using what its memory carries?

``with memory_ablation(model, "reset"):`` every neural memory of the model starts from its
initial state at every chunk (its chunk_size, counted from each call's first token), so
nothing written in one chunk is read in the next; the convolution, attention and everything
else run unchanged.  ``"zero"`` replaces every memory read by zeros.  ``"carried"`` is the
model as trained.  The loss or accuracy gap between "carried" and "reset" is what the
memory carries across chunks; a gap near zero means the memory acts as a local feature.
``"reset_shard"`` (TNT models only) starts every memory, the global one too, afresh at every
TNT shard boundary (``shard_length`` tokens from each call's first token): the TNT-Atlas
seed's "reset every shard", between carried and reset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ..errors import MiraslabError
from .hierarchical_memory import HierarchicalMemory
from .neural_memory import NeuralMemory

MODES = ("carried", "reset", "zero")
SHARD_RESET = "reset_shard"


def memories_of(model: nn.Module) -> list[NeuralMemory]:
    return [module for module in model.modules() if isinstance(module, NeuralMemory)]


def shard_lengths(model: nn.Module) -> dict[NeuralMemory, int]:
    """Each memory of a TNT hierarchy, with its hierarchy's shard length."""
    return {
        memory: module.shard_length
        for module in model.modules()
        if isinstance(module, HierarchicalMemory)
        for memory in memories_of(module)
    }


def modes_of(model: nn.Module) -> tuple[str, ...]:
    """Every mode that applies to ``model``: with TNT shards, reset_shard after carried."""
    if not memories_of(model):
        return ("carried",)
    return ("carried", SHARD_RESET, "reset", "zero") if shard_lengths(model) else MODES


@contextlib.contextmanager
def memory_ablation(model: nn.Module, mode: str) -> Iterator[int]:
    """Run ``model`` under ``mode`` inside the block; yields how many memories it changed."""
    if mode not in (*MODES, SHARD_RESET):
        raise MiraslabError(f"--memory: expected one of {', '.join((*MODES, SHARD_RESET))}, got {mode!r}")
    memories = memories_of(model)
    if mode != "carried" and not memories:
        raise MiraslabError(f"--memory {mode}: the model has no neural memory to ablate")
    spans = shard_lengths(model) if mode == SHARD_RESET else {}
    if mode == SHARD_RESET and not spans:
        raise MiraslabError(f"--memory {mode}: the model has no TNT hierarchy (model.tnt), so no shards")
    previous = [(memory.ablation, memory.reset_span) for memory in memories]
    for memory in memories:
        memory.ablation = {"carried": None, SHARD_RESET: "reset"}.get(mode, mode)
        memory.reset_span = spans.get(memory)
    try:
        yield len(memories)
    finally:
        for memory, (ablation, span) in zip(memories, previous, strict=True):
            memory.ablation, memory.reset_span = ablation, span
