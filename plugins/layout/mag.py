"""MAG, memory as a gate (Titans sec. 4.2, eq. 26-28; the Atlas-MAG seed):

    y = norm(x);   out = SWA(y) * sigmoid(gain * RMSNorm(Mem(y)));   x += out;   x += FFN(norm(x))

Sliding-window attention and the neural memory read the same input in parallel; the
memory's read-out gates the attention's.  The gain is log-parameterised (see
miraslab.model.memory_gate) and the gate's values are recorded for monitors.
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import Block, BlockContext, MemoryGate


@attrs.frozen
class MAGParams:
    gain_init: float = miraslab.param(1.0, gt=0, doc="initial gain of the gate's pre-activation")


class MAGBlock(Block):
    """SWA(y) * sigmoid(gain * norm(Mem(y)))."""

    uses_memory = True
    packs_documents = True  # documents reach the memory and the attention

    def __init__(self, params: MAGParams, context: BlockContext):
        super().__init__()
        self.mix_norm = context.norm()
        self.attn, self.memory = context.attention(), context.memory()
        self.gate = MemoryGate(context.dim, params.gain_init, context.norm_eps)
        self.ffn_norm, self.ffn = context.norm(), context.feed_forward()

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False, documents=None):
        cache, memory_state = state if state is not None else (None, None)
        y = self.mix_norm(x)
        # the decode cache only where it is returned: trimming it to the window is a boolean
        # mask, data-dependent, which breaks a compiled training step's graph
        attended = self.attn(y, cache=cache, return_cache=return_state, documents=documents)
        attended, cache = attended if return_state else (attended, None)
        remembered, memory_state = self.memory(y, memory_state, return_state=True, documents=documents)
        x = x + attended * self.gate(remembered)
        x = x + self.ffn(self.ffn_norm(x))
        return (x, (cache, memory_state)) if return_state else x


@miraslab.hookimpl
def register_layouts(register):
    register("mag", MAGBlock, MAGParams)
