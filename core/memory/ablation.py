"""Memory ablations for evaluation: is the model using what its memory carries?

``with memory_ablation(model, "reset"):`` every neural memory of the model starts from its
initial state at every chunk (its chunk_size, counted from each call's first token), so
nothing written in one chunk is read in the next; the convolution, attention and everything
else run unchanged.  ``"zero"`` replaces every memory read by zeros.  ``"carried"`` is the
model as trained.  The loss or accuracy gap between "carried" and "reset" is what the
memory carries across chunks; a gap near zero means the memory acts as a local feature.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ..errors import MiraslabError
from .neural_memory import NeuralMemory

MODES = ("carried", "reset", "zero")


def memories_of(model: nn.Module) -> list[NeuralMemory]:
    return [module for module in model.modules() if isinstance(module, NeuralMemory)]


@contextlib.contextmanager
def memory_ablation(model: nn.Module, mode: str) -> Iterator[int]:
    """Run ``model`` under ``mode`` inside the block; yields how many memories it changed."""
    if mode not in MODES:
        raise MiraslabError(f"--memory: expected one of {', '.join(MODES)}, got {mode!r}")
    memories = memories_of(model)
    if mode != "carried" and not memories:
        raise MiraslabError(f"--memory {mode}: the model has no neural memory to ablate")
    previous = [memory.ablation for memory in memories]
    for memory in memories:
        memory.ablation = None if mode == "carried" else mode
    try:
        yield len(memories)
    finally:
        for memory, before in zip(memories, previous, strict=True):
            memory.ablation = before
