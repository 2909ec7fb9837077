"""The memory layer: (batch, seq, dim) -> (batch, seq, dim), with heads, chunks and a decode state.

The block around the memory follows Titans (sec. 4.4): q, k, v projections, a short
causal depthwise convolution, SiLU, l2-normalised queries and keys, then the feature
map phi; gates come from the same input; the read-out is RMS-normalised per head and
projected back.  Usable without recipes::

    layer = MemoryLayer(256, heads=4, memory="mlp", algorithm={"name": "muon", "ns_steps": 3})
    y = layer(x)                           # training: the chunked path
    y, state = layer(x, return_state=True)
    y_next, state = layer(x_next, state=state, return_state=True)   # continue exactly
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..params import Component, make_component
from ..registry import get_registry
from .kernels.merge_heads import merge_heads
from .neural_memory import NeuralMemory, NeuralMemoryState
from .qkv_projections import MemoryInputs
from .spec import GatesSpec, MemorySpec

ComponentLike = str | Mapping[str, Any] | Component


@dataclasses.dataclass
class LayerState:
    """Decode state of a MemoryLayer: O(1) in the context length."""

    memory: NeuralMemoryState = dataclasses.field(default_factory=NeuralMemoryState)
    conv: torch.Tensor | None = None  # (B, channels, kernel - 1): the convolution's last inputs
    position: int = 0

    def detach(self) -> LayerState:
        conv = self.conv.detach() if self.conv is not None else None
        return LayerState(self.memory.detach(), conv, self.position)


def as_component(kind: str, value: ComponentLike) -> Component:
    """A Component from a name, a {"name": ..., options} table, or a Component."""
    if isinstance(value, Component):
        return value
    registry = get_registry()
    if isinstance(value, str):
        return make_component(kind, value, {}, registry)
    table = dict(value)
    return make_component(kind, table.pop("name"), table, registry)


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


def spec_options(spec: MemorySpec) -> dict[str, Any]:
    """Every ``[model.memory]`` key but the shape (heads, head_dim), as MemoryLayer's keyword
    arguments: the one copy of the spec's fields, used by the plain layer and by TNT."""
    return dict(
        memory=spec.memory,
        bias=spec.bias,
        retention=spec.retention,
        algorithm=spec.algorithm,
        features=spec.features,
        chunk_size=spec.chunk_size,
        inner_steps=spec.inner_steps,
        kernel=spec.kernel,
        path=spec.path,
        conv_kernel=spec.conv_kernel,
        activation=spec.activation,
        qk_norm=spec.qk_norm,
        output_norm=spec.output_norm,
        qk_projection=spec.qk_projection,
        channelwise_lr=spec.gates.channelwise_lr,
        channelwise_window=spec.gates.channelwise_window,
        channelwise_decay=spec.gates.channelwise_decay,
        channelwise_momentum=spec.gates.channelwise_momentum,
        gate_rank=spec.gates.rank,
        compile_chunks=spec.compile_chunks,
    )


# the options that shape the projections around a memory (q/k/v inputs, read-out norm), which
# a layer holding several memories (TNT) builds once for all of them
AROUND_MEMORY = ("conv_kernel", "activation", "output_norm")


def build_neural_memory(
    dim: int,
    heads: int,
    head_dim: int,
    *,
    memory: ComponentLike,
    bias: ComponentLike,
    retention: ComponentLike,
    algorithm: ComponentLike,
    features: ComponentLike,
    chunk_size: int,
    path: str,
    qk_norm: bool,
    qk_projection: bool,
    channelwise_lr: bool,
    channelwise_window: bool,
    channelwise_decay: bool,
    channelwise_momentum: bool,
    gate_rank: int,
    compile_chunks: bool,
    inner_steps: str = "mini_batch",
    kernel: str = "auto",
) -> NeuralMemory:
    """The memory branch (rule, gates, feature map, chunked or recurrent path) from
    MemoryLayer's options; the plain layer and TNT's global and local memories all build theirs here."""
    return NeuralMemory(
        dim,
        heads,
        head_dim,
        memory=as_component("memory", memory),
        bias=as_component("bias", bias),
        retention=as_component("retention", retention),
        algorithm=as_component("algorithm", algorithm),
        features=as_component("features", features),
        chunk_size=chunk_size,
        path=path,
        qk_projection=qk_projection,
        qk_norm=qk_norm,
        channelwise=GatesSpec(
            channelwise_lr=channelwise_lr,
            channelwise_window=channelwise_window,
            channelwise_decay=channelwise_decay,
            channelwise_momentum=channelwise_momentum,
        ).channelwise(),
        gate_rank=gate_rank,
        compile_chunks=compile_chunks,
        inner_steps=inner_steps,
        kernel=kernel,
    )


class MemoryLayer(nn.Module):
    """A Miras neural memory as a sequence layer."""

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        head_dim: int | None = None,
        *,
        memory: ComponentLike = "mlp",
        bias: ComponentLike = "l2",
        retention: ComponentLike = "decay",
        algorithm: ComponentLike = "momentum",
        features: ComponentLike = "identity",
        chunk_size: int = 64,
        inner_steps: str = "mini_batch",
        kernel: str = "auto",
        path: str = "chunked",
        conv_kernel: int = 4,
        activation: str = "silu",
        qk_norm: bool = True,
        output_norm: bool = True,
        qk_projection: bool = False,
        channelwise_lr: bool = False,
        channelwise_window: bool = False,
        channelwise_decay: bool = False,
        channelwise_momentum: bool = False,
        gate_rank: int = 16,
        compile_chunks: bool = False,
    ):
        super().__init__()
        head_dim = head_dim or dim // heads
        if head_dim * heads == 0:
            raise ValueError(f"dim {dim} is too small for {heads} heads")
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.inputs = MemoryInputs(dim, heads, head_dim, conv_kernel, activation, qk_norm)
        self.memory = build_neural_memory(
            dim,
            heads,
            head_dim,
            memory=memory,
            bias=bias,
            retention=retention,
            algorithm=algorithm,
            features=features,
            chunk_size=chunk_size,
            path=path,
            qk_norm=qk_norm,
            qk_projection=qk_projection,
            channelwise_lr=channelwise_lr,
            channelwise_window=channelwise_window,
            channelwise_decay=channelwise_decay,
            channelwise_momentum=channelwise_momentum,
            gate_rank=gate_rank,
            compile_chunks=compile_chunks,
            inner_steps=inner_steps,
            kernel=kernel,
        )
        self.norm = nn.RMSNorm(head_dim, eps=1e-6) if output_norm else nn.Identity()
        self.out = nn.Linear(heads * head_dim, dim, bias=False)

    @classmethod
    def from_spec(
        cls,
        spec: MemorySpec,
        dim: int,
        default_heads: int,
        **overrides: Any,
    ) -> MemoryLayer:
        heads = spec.heads or default_heads
        options = spec_options(spec)
        options.update(overrides)
        return cls(dim, heads, spec.head_dim or dim // heads, **options)

    @property
    def chunk_size(self) -> int:
        return self.memory.chunk_size

    def merge_heads(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, H, T, d) read-outs -> (B, T, H*d), normalised per head."""
        return merge_heads(y, self.norm, dtype)

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState | None = None,
        return_state: bool = False,
        path: str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, LayerState]:
        check_layer_input(x, self.dim, state)
        # no LayerState() for a missing state: dynamo cannot trace a dataclass's default factory
        conv_in, memory_in, position = (
            (state.conv, state.memory, state.position) if state else (None, None, 0)
        )
        q, k, v, conv = self.inputs(x, conv_in)
        y, memory_state = self.memory(q, k, v, x, memory_in, path)
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
