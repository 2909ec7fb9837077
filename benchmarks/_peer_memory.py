"""The peer: titans-pytorch's ``NeuralMemory`` as the memory of miraslab's one-block LMM model.

``PeerMemory`` wraps ``titans_pytorch.NeuralMemory`` behind the call a block makes of its memory
sublayer (``MemoryLayer``'s: ``memory(x, state, return_state=True, documents=None)`` ->
``(y, state)``); ``PeerLMMBlock`` is the ``lmm`` layout's block (x += Mem(norm(x));
x += FFN(norm(x))) with that memory in place of miraslab's.  ``register()`` puts the block on
miraslab's registry as the layout ``titans-pytorch-lmm`` (the public plugin seam), so
miraslab's ``Trainer`` builds and trains it from a recipe like any other model::

    register()
    sets = ["model.layout.name=titans-pytorch-lmm", "model.layout.depth=2"]

The memory is built as ``_subjects.TITANS_CONFIGS`` builds it for the speed benchmark, with the
recipe's width (dim = d_model), memory heads and chunk (``model.memory.chunk_size``) and
titans-pytorch's defaults otherwise (no ``batch_size``: every chunk's gradient is taken at the
call's initial weights).  The linear row is depth 1 without titans-pytorch's LayerNorm and
residual around the matrix (M(x) = x W), as in the speed benchmark.

miraslab's memory-use monitor ablates miraslab memories only; for the peer ``reset_every_chunk``
gives the same read: every ``chunk_size`` tokens (counted from the call's first token) run as a
separate titans-pytorch call from its initial weights, so nothing written in one chunk is read
in the next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import torch
from _subjects import TITANS_CONFIGS, titans_version
from torch import nn

import miraslab
from miraslab.api import Block, BlockContext
from miraslab.registry import Source, get_registry

LAYOUT = "titans-pytorch-lmm"
# depth -> the speed benchmark's titans-pytorch configuration it takes its memory model from
DEPTH_CONFIG = {2: "deep/default", 1: "linear/batch64"}
SIZE_KEYS = {"dim", "chunk_size", "dim_head", "heads", "batch_size"}


def titans_kwargs(dim: int, heads: int, head_dim: int, chunk_size: int, depth: int) -> dict[str, Any]:
    """NeuralMemory's keyword arguments: the speed benchmark's for this depth, at this size."""
    spelled = {k: v for k, v in TITANS_CONFIGS[DEPTH_CONFIG[depth]].items() if k not in SIZE_KEYS}
    return {**spelled, "dim": dim, "chunk_size": chunk_size, "dim_head": head_dim, "heads": heads}


class PeerMemory(nn.Module):
    """titans-pytorch's NeuralMemory with a memory sublayer's call: (B, T, dim) -> (B, T, dim)."""

    def __init__(self, dim: int, heads: int, head_dim: int, chunk_size: int, depth: int):
        super().__init__()
        from titans_pytorch import NeuralMemory

        self.chunk_size = chunk_size
        self.memory = NeuralMemory(**titans_kwargs(dim, heads, head_dim, chunk_size, depth))
        # its per-head initial weights are one tensor repeated by einops (stride 0 over the heads):
        # an in-place optimizer step refuses them, so each head gets its own copy (same values)
        for parameter in self.memory.memory_model_parameters:
            parameter.data = parameter.data.contiguous()
        self.reset_every_chunk = False  # the memory-use ablation: see reset_every_chunk()

    def documents_reason(self) -> str | None:
        return "titans-pytorch's NeuralMemory takes no document starts"

    def forward(
        self,
        x: torch.Tensor,
        state: Any = None,
        return_state: bool = False,
        path: str | None = None,
        documents: Any = None,
    ) -> Any:
        if documents is not None:
            raise ValueError(self.documents_reason())
        if self.reset_every_chunk:
            y, state = self._chunks_apart(x), None
        else:
            y, state = self.memory(x, state=state)
        return (y, state) if return_state else y

    def _chunks_apart(self, x: torch.Tensor) -> torch.Tensor:
        """Every chunk of x as its own sequence from the initial weights (a ragged tail too)."""
        batch, length, dim = x.shape
        whole = length - length % self.chunk_size
        pieces = []
        if whole:
            rows = x[:, :whole].reshape(batch * whole // self.chunk_size, self.chunk_size, dim)
            pieces.append(self.memory(rows)[0].reshape(batch, whole, dim))
        if whole < length:
            pieces.append(self.memory(x[:, whole:])[0])
        return torch.cat(pieces, dim=1)


@contextlib.contextmanager
def reset_every_chunk(model: nn.Module) -> Iterator[int]:
    """Inside the block every PeerMemory of ``model`` restarts at each chunk; yields how many."""
    memories = [m for m in model.modules() if isinstance(m, PeerMemory)]
    for memory in memories:
        memory.reset_every_chunk = True
    try:
        yield len(memories)
    finally:
        for memory in memories:
            memory.reset_every_chunk = False


@attrs.frozen
class PeerLMMParams:
    depth: int = miraslab.param(2, choices=(1, 2), doc="titans-pytorch memory MLP depth (1: a matrix)")


class PeerLMMBlock(Block):
    """The lmm layout's block with titans-pytorch's memory: x += Mem(norm(x)); x += FFN(norm(x))."""

    uses_memory = True
    uses_attention = False

    def __init__(self, params: PeerLMMParams, context: BlockContext):
        super().__init__()
        heads, head_dim = context.memory_spec.shape(context.dim, context.n_heads)
        chunk = context.memory_spec.chunk_size
        self.memory_norm = context.norm()
        self.memory = PeerMemory(context.dim, heads, head_dim, chunk, params.depth)
        self.ffn_norm, self.ffn = context.norm(), context.feed_forward()

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False, documents=None):
        h, memory_state = self.memory(self.memory_norm(x), state, return_state=True, documents=documents)
        x = x + h
        x = x + self.ffn(self.ffn_norm(x))
        return (x, memory_state) if return_state else x


class _Plugin:
    @miraslab.hookimpl
    def register_layouts(self, register):
        register(LAYOUT, PeerLMMBlock, PeerLMMParams)


def register() -> None:
    """Put the ``titans-pytorch-lmm`` layout on the process registry (once)."""
    import titans_pytorch  # noqa: F401  now, not under the meta device a size check builds on

    registry = get_registry()
    if LAYOUT not in registry.names("layout"):
        registry.register_plugin(
            _Plugin(), Source("titans-pytorch-peer", "titans-pytorch", titans_version() or "")
        )
