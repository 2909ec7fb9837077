"""TNT hierarchical memory (arXiv 2511.07343): one global memory plus local memories.

All memories read the same q, k, v (one set of input projections).  The global memory
uses large chunks and carries its state across the whole sequence; each local memory
uses small chunks and is reset to its learned W_init at every shard boundary (every
``shard_length`` tokens, counted from the start of the stream), with the Q-K projection
(TNT eq. 7) feeding its queries.  A mixer plugin combines the read-outs.

Shards that start fresh are independent, so during training they are stacked into the
batch dimension and run in one call.
"""

from __future__ import annotations

import dataclasses

import attrs
import torch
from torch import nn

from ..components import build_component
from .kernels.merge_heads import merge_heads
from .neural_memory import NeuralMemory, NeuralMemoryState
from .qkv_projections import MemoryInputs
from .spec import MemorySpec, TNTSpec


@dataclasses.dataclass
class HierarchicalState:
    conv: torch.Tensor | None = None
    global_memory: NeuralMemoryState = dataclasses.field(default_factory=NeuralMemoryState)
    local_memories: list[NeuralMemoryState] | None = None
    position: int = 0

    def detach(self) -> HierarchicalState:
        return HierarchicalState(
            self.conv.detach() if self.conv is not None else None,
            self.global_memory.detach(),
            [s.detach() for s in self.local_memories] if self.local_memories is not None else None,
            self.position,
        )


def _take_last_shard(state: NeuralMemoryState, batch: int, shards: int) -> NeuralMemoryState:
    """From a state batched as (batch * shards, ...), the state of each row's last shard."""

    def last(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, shards, *t.shape[1:])[:, -1]

    memory = state.memory.map(last) if state.memory is not None else None
    return NeuralMemoryState(memory, last(state.qk) if state.qk is not None else None)


class HierarchicalMemory(nn.Module):
    def __init__(self, dim: int, heads: int, spec: MemorySpec, tnt: TNTSpec):
        super().__init__()
        heads, head_dim = spec.shape(dim, heads)
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.shard_length = tnt.shard_length
        # one set of q/k/v inputs and one read-out norm around all the memories; each memory
        # is the spec at its own chunk size (and, locally, with TNT's Q-K projection)
        self.inputs = MemoryInputs(
            dim, heads, head_dim, spec.conv_kernel, spec.activation, spec.qk_norm, spec.conv_init
        )

        def memory(chunk: int, qk_projection: bool) -> NeuralMemory:
            return NeuralMemory(
                dim, heads, head_dim, attrs.evolve(spec, chunk_size=chunk, qk_projection=qk_projection)
            )

        self.global_memory = memory(tnt.global_chunk, qk_projection=False)
        self.local_memories = nn.ModuleList(memory(c, tnt.local_qk_projection) for c in tnt.local_chunks)
        inner = heads * head_dim
        self.mixer = build_component(tnt.mixer, dim=inner, n_memories=1 + len(self.local_memories))
        self.norm = nn.RMSNorm(head_dim, eps=1e-6) if spec.output_norm else nn.Identity()
        self.out = nn.Linear(inner, dim, bias=False)

    def _merge(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return merge_heads(y, self.norm, dtype)

    def _run_local(
        self,
        memory: NeuralMemory,
        q,
        k,
        v,
        x,
        state: NeuralMemoryState | None,
        position: int,
        path: str | None,
    ) -> tuple[torch.Tensor, NeuralMemoryState | None]:
        """Split at absolute shard boundaries; every shard after a boundary starts from W_init."""
        shard, total = self.shard_length, q.shape[2]
        outputs = []
        start = 0
        if position % shard == 0:
            state = None  # the previous call ended on a boundary
        head = min(total, (shard - position % shard) % shard)
        if head:  # finish the shard the state is in
            y, state = memory(q[:, :, :head], k[:, :, :head], v[:, :, :head], x[:, :head], state, path)
            outputs.append(y)
            start = head
        shards = (total - start) // shard
        if shards:  # whole fresh shards, stacked into the batch
            end = start + shards * shard
            batch = q.shape[0]

            def stack(t: torch.Tensor, time_dim: int) -> torch.Tensor:
                piece = t.narrow(time_dim, start, shards * shard)
                shape = list(piece.shape)
                shape[time_dim : time_dim + 1] = [shards, shard]
                piece = piece.reshape(shape).movedim(time_dim, 1)
                return piece.reshape(batch * shards, *piece.shape[2:])

            y, batched_state = memory(stack(q, 2), stack(k, 2), stack(v, 2), stack(x, 1), None, path)
            y = y.reshape(batch, shards, *y.shape[1:]).movedim(1, 2)
            outputs.append(y.reshape(batch, y.shape[1], shards * shard, y.shape[-1]))
            state = _take_last_shard(batched_state, batch, shards)
            start = end
        if start < total:  # the beginning of a new shard
            y, state = memory(q[:, :, start:], k[:, :, start:], v[:, :, start:], x[:, start:], None, path)
            outputs.append(y)
        return torch.cat(outputs, dim=2), state

    def retrieve(self, x: torch.Tensor, state: HierarchicalState | None) -> torch.Tensor:
        """Read every memory with x's queries without writing, and mix (MAC's retrieval)."""
        state = state or HierarchicalState()
        q, _, _, _ = self.inputs(x, convolve=False)
        reads = [self._merge(self.global_memory.retrieve(q, state.global_memory), x.dtype)]
        fresh = state.position % self.shard_length == 0  # a new shard starts at W_init
        for index, memory in enumerate(self.local_memories):
            local = None if fresh or state.local_memories is None else state.local_memories[index]
            reads.append(self._merge(memory.retrieve(q, local), x.dtype))
        return self.out(self.mixer(reads))

    def documents_reason(self) -> str | None:
        """TNT cannot run packed documents: its shards are counted from the row's start."""
        return "TNT's local memories reset at shards counted from the row's start, not at each document"

    def forward(
        self,
        x: torch.Tensor,
        state: HierarchicalState | None = None,
        return_state: bool = False,
        path: str | None = None,
        documents: object = None,
    ):
        if documents is not None:
            raise ValueError(f"HierarchicalMemory: {self.documents_reason()}")
        state = state or HierarchicalState()
        q, k, v, conv = self.inputs(x, state.conv)
        y_global, global_state = self.global_memory(q, k, v, x, state.global_memory, path)
        reads = [self._merge(y_global, x.dtype)]
        local_states = []
        for index, memory in enumerate(self.local_memories):
            previous = state.local_memories[index] if state.local_memories is not None else None
            y_local, local_state = self._run_local(memory, q, k, v, x, previous, state.position, path)
            reads.append(self._merge(y_local, x.dtype))
            local_states.append(local_state)
        out = self.out(self.mixer(reads))
        if not return_state:
            return out
        return out, HierarchicalState(conv, global_state, local_states, state.position + x.shape[1])
