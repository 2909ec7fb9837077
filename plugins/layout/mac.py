"""MAC, memory as context (Titans sec. 4.1, eq. 21-25).

The sequence is cut into segments.  For each segment S:

    h   = M*_{start}(q)                       retrieve with the memory as it was at the segment start
    y   = Attn([persistent | h | S])          attention inside the segment over retrieved and own tokens
    M   <- write(M, y)                        the memory learns from the attention output: after, not before
    out = y * sigmoid(gain * RMSNorm(M*(y)))

Retrieved token h_j sits at position j and is seen causally (by queries i >= j), so no
token sees what the memory retrieved for a later one.  Attention does not cross segment
boundaries: the memory is what carries information between segments.
"""

from __future__ import annotations

import dataclasses

import attrs
import torch

import miraslab
from miraslab.api import Block, BlockContext, KVCache, MemoryGate


@attrs.frozen
class MACParams:
    segment: int = miraslab.param(0, ge=0, doc="segment length; 0 uses model.memory.chunk_size")
    gain_init: float = miraslab.param(1.0, gt=0, doc="initial gain of the output gate")


@dataclasses.dataclass
class MACState:
    memory: object = None  # the memory's state now
    at_segment_start: object = None  # the memory's state when the current segment began
    cache: KVCache | None = None  # keys/values of the current segment only
    position: int = 0


class MACBlock(Block):
    """Retrieve, attend within the segment, then write the attention output to the memory."""

    uses_memory = True

    def __init__(self, params: MACParams, context: BlockContext):
        super().__init__()
        self.segment = params.segment or context.memory_spec.chunk_size
        self.mix_norm = context.norm()
        self.attn, self.memory = context.attention(window=0), context.memory()
        self.gate = MemoryGate(context.dim, params.gain_init, context.norm_eps)
        self.ffn_norm, self.ffn = context.norm(), context.feed_forward()

    def _segment(self, x: torch.Tensor, state: MACState) -> torch.Tensor:
        if state.position % self.segment == 0:  # a new segment: fresh attention, a new retrieval state
            state.at_segment_start = state.memory
            state.cache = self.attn.empty_cache(x, state.position)
        y = self.mix_norm(x)
        retrieved = self.memory.retrieve(y, state.at_segment_start)
        attended, state.cache = self.attn(y, aligned=retrieved, cache=state.cache, return_cache=True)
        remembered, state.memory = self.memory(attended, state.memory, return_state=True)
        x = x + attended * self.gate(remembered)
        state.position += x.shape[1]
        return x + self.ffn(self.ffn_norm(x))

    def forward(self, x: torch.Tensor, state: MACState | None = None, return_state: bool = False):
        state = dataclasses.replace(state) if state is not None else MACState()
        outputs, t = [], 0
        while t < x.shape[1]:
            length = min(self.segment - state.position % self.segment, x.shape[1] - t)
            outputs.append(self._segment(x[:, t : t + length], state))
            t += length
        out = torch.cat(outputs, dim=1)
        return (out, state) if return_state else out


@miraslab.hookimpl
def register_layouts(register):
    register("mac", MACBlock, MACParams)
