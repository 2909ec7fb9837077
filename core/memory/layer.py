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

from collections.abc import Mapping
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from ..params import Component, make_component
from ..registry import Registry, get_registry
from .build import build_features, build_rule
from .engine import memory_op
from .gates import GateProjections
from .qk_projection import qk_project
from .spec import MemorySpec
from .state import MemoryState

ComponentLike = str | Mapping[str, Any] | Component


@attrs.define
class LayerState:
    """Decode state of a MemoryLayer: O(1) in the context length."""

    memory: MemoryState | None = None
    conv: torch.Tensor | None = None  # (B, channels, kernel - 1): the last inputs of the convolution
    qk: torch.Tensor | None = None  # (B, H, d, d): sum of k k^T for the Q-K projection
    position: int = 0

    def detach(self) -> LayerState:
        return LayerState(
            self.memory.detach() if self.memory is not None else None,
            self.conv.detach() if self.conv is not None else None,
            self.qk.detach() if self.qk is not None else None,
            self.position,
        )


def _component(kind: str, value: ComponentLike, registry: Registry) -> Component:
    if isinstance(value, Component):
        return value
    if isinstance(value, str):
        return make_component(kind, value, {}, registry)
    table = dict(value)
    return make_component(kind, table.pop("name"), table, registry)


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
        path: str = "chunked",
        conv_kernel: int = 4,
        activation: str = "silu",
        qk_norm: bool = True,
        output_norm: bool = True,
        qk_projection: bool = False,
        channelwise_lr: bool = False,
        gate_rank: int = 16,
        registry: Registry | None = None,
    ):
        super().__init__()
        registry = registry or get_registry()
        head_dim = head_dim or dim // heads
        if head_dim * heads == 0:
            raise ValueError(f"dim {dim} is too small for {heads} heads")
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.chunk_size, self.path = chunk_size, path
        self.activation, self.qk_norm, self.use_qk_projection = activation, qk_norm, qk_projection
        inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.conv_kernel = conv_kernel
        if conv_kernel:
            self.conv = nn.Conv1d(3 * inner, 3 * inner, conv_kernel, groups=3 * inner, bias=True)
        self.features = build_features(_component("features", features, registry), head_dim)
        self.rule = build_rule(
            _component("memory", memory, registry),
            _component("bias", bias, registry),
            _component("retention", retention, registry),
            _component("algorithm", algorithm, registry),
            heads=heads,
            d_key=self.features.out_dim,
            d_value=head_dim,
            channelwise_lr=channelwise_lr,
        )
        self.gates = GateProjections(dim, heads, self.rule.gate_defs(), head_dim, gate_rank)
        self.norm = nn.RMSNorm(head_dim, eps=1e-6) if output_norm else nn.Identity()
        self.out = nn.Linear(inner, dim, bias=False)

    @classmethod
    def from_spec(
        cls,
        spec: MemorySpec,
        dim: int,
        default_heads: int,
        *,
        chunk_size: int | None = None,
        qk_projection: bool | None = None,
        registry: Registry | None = None,
    ) -> MemoryLayer:
        heads = spec.heads or default_heads
        return cls(
            dim,
            heads,
            spec.head_dim or dim // heads,
            memory=spec.memory,
            bias=spec.bias,
            retention=spec.retention,
            algorithm=spec.algorithm,
            features=spec.features,
            chunk_size=chunk_size or spec.chunk_size,
            path=spec.path,
            conv_kernel=spec.conv_kernel,
            activation=spec.activation,
            qk_norm=spec.qk_norm,
            output_norm=spec.output_norm,
            qk_projection=spec.qk_projection if qk_projection is None else qk_projection,
            channelwise_lr=spec.gates.channelwise_lr,
            gate_rank=spec.gates.rank,
            registry=registry,
        )

    # --- the pieces --------------------------------------------------------------------

    def _convolve(self, qkv: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Causal depthwise convolution over time; the last kernel-1 inputs carry over."""
        if not self.conv_kernel:
            return qkv, None
        x = qkv.transpose(1, 2)  # (B, C, T)
        past = state.conv
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], self.conv_kernel - 1)
        x = torch.cat([past.to(x.dtype), x], dim=2)
        carry = x[:, :, x.shape[2] - (self.conv_kernel - 1) :]
        return F.conv1d(x, self.conv.weight, self.conv.bias, groups=self.conv.groups).transpose(1, 2), carry

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.heads, -1).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState | None = None,
        return_state: bool = False,
        path: str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, LayerState]:
        state = state or LayerState()
        qkv, conv_carry = self._convolve(self.qkv(x), state)
        if self.activation == "silu":
            qkv = F.silu(qkv)
        q, k, v = (self._heads(t) for t in qkv.chunk(3, dim=-1))
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        qk_state = None
        if self.use_qk_projection:
            q, qk_state = qk_project(q, k, state.qk, self.chunk_size)
            if self.qk_norm:
                q = F.normalize(q, dim=-1)
        q, k = self.features(q, query=True), self.features(k)
        gates = self.gates(x)
        y, memory_state = memory_op(
            self.rule, q, k, v, gates, state.memory, self.chunk_size, path or self.path
        )
        y = self.norm(y.to(x.dtype))
        y = self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
        if not return_state:
            return y
        return y, LayerState(memory_state, conv_carry, qk_state, state.position + x.shape[1])
