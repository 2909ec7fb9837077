"""The memory layer: (batch, seq, dim) -> (batch, seq, dim), with heads, chunks and a decode state.

The block around the memory follows Titans (sec. 4.4): q, k, v projections, a short
causal depthwise convolution, SiLU, l2-normalised queries and keys, then the feature
map phi; gates come from the same input; the read-out is RMS-normalised per head and
projected back.  Usable without recipes::

    layer = MemoryLayer.from_options(256, heads=4, memory="mlp", algorithm={"name": "muon", "ns_steps": 3})
    y = layer(x)                           # training: the chunked path
    y, state = layer(x, return_state=True)
    y_next, state = layer(x_next, state=state, return_state=True)   # continue exactly
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..data.documents import PackedDocuments
from .kernels.merge_heads import merge_heads
from .neural_memory import NeuralMemory, NeuralMemoryState
from .qkv_projections import MemoryInputs
from .spec import MemorySpec


@dataclasses.dataclass
class LayerState:
    """Decode state of a MemoryLayer: O(1) in the context length."""

    memory: NeuralMemoryState = dataclasses.field(default_factory=NeuralMemoryState)
    conv: torch.Tensor | None = None  # (B, channels, kernel - 1): the convolution's last inputs
    position: int = 0

    def detach(self) -> LayerState:
        conv = self.conv.detach() if self.conv is not None else None
        return LayerState(self.memory.detach(), conv, self.position)


def check_layer_input(x: torch.Tensor, dim: int, state: LayerState | None) -> None:
    """One line naming what does not fit, before the projections raise a torch error."""
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"MemoryLayer: x must be (batch, seq, dim={dim}), got shape {tuple(x.shape)}")
    if state is None:
        return
    if not isinstance(state, LayerState):
        raise TypeError(
            f"MemoryLayer: state must be the LayerState the layer returned (return_state=True), "
            f"got {type(state).__name__}"
        )
    if state.conv is not None and state.conv.shape[0] != x.shape[0]:
        raise ValueError(f"MemoryLayer: state is for batch {state.conv.shape[0]}, x has batch {x.shape[0]}")


class MemoryLayer(nn.Module):
    """A Miras neural memory as a sequence layer, built from its ``[model.memory]`` spec."""

    def __init__(self, dim: int, n_heads: int, spec: MemorySpec):
        """``n_heads``: the model's heads, used where ``spec.heads`` is 0."""
        super().__init__()
        heads, head_dim = spec.shape(dim, n_heads)
        if head_dim * heads == 0:
            raise ValueError(f"dim {dim} is too small for {heads} heads")
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.inputs = MemoryInputs(
            dim, heads, head_dim, spec.conv_kernel, spec.activation, spec.qk_norm, spec.conv_init
        )
        self.memory = NeuralMemory(dim, heads, head_dim, spec)
        self.norm = nn.RMSNorm(head_dim, eps=1e-6) if spec.output_norm else nn.Identity()
        self.out = nn.Linear(heads * head_dim, dim, bias=False)

    @classmethod
    def from_options(
        cls, dim: int, heads: int = 4, head_dim: int | None = None, **options: Any
    ) -> MemoryLayer:
        """Without a recipe: ``options`` are ``[model.memory]``'s keys (components as names,
        ``{"name": ..., options}`` tables or Components; ``gates={"channelwise_decay": True}``),
        structured and checked as a recipe's table is."""
        return cls(dim, heads, MemorySpec.from_options(heads=heads, head_dim=head_dim or 0, **options))

    @property
    def chunk_size(self) -> int:
        return self.memory.chunk_size

    def documents_reason(self) -> str | None:
        """Why this layer cannot run packed documents, or None (the convolution runs within
        each document; the memory restarts at each: ``NeuralMemory.documents_reason``)."""
        return self.memory.documents_reason()

    def merge_heads(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, H, T, d) read-outs -> (B, T, H*d), normalised per head."""
        return merge_heads(y, self.norm, dtype)

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState | None = None,
        return_state: bool = False,
        path: str | None = None,
        documents: PackedDocuments | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, LayerState]:
        """``documents``: x's rows hold packed documents (``data.reset_at_documents``), each
        read as if alone; a ``state`` is continued by each row's leading document only
        (``data.carry_state``)."""
        check_layer_input(x, self.dim, state)
        # no LayerState() for a missing state: dynamo cannot trace a dataclass's default factory
        conv_in, memory_in, position = (
            (state.conv, state.memory, state.position) if state else (None, None, 0)
        )
        q, k, v, conv = self.inputs(x, conv_in, documents=documents)
        y, memory_state = self.memory(q, k, v, x, memory_in, path, documents=documents)
        out = self.out(self.merge_heads(y, x.dtype))
        if not return_state:
            return out
        return out, LayerState(memory_state, conv, position + x.shape[1])

    def retrieve(self, x: torch.Tensor, state: LayerState | None) -> torch.Tensor:
        """Read the memory with x's queries without writing (MAC's h_t = M*(q_t)).

        Each token's query comes from that token alone (no convolution), so reading a
        segment at once and token by token agree.
        """
        q, _, _, _ = self.inputs(x, convolve=False)
        y = self.memory.retrieve(q, state.memory if state is not None else None)
        return self.out(self.merge_heads(y, x.dtype))
