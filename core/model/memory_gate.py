"""The gate between attention and memory in MAG/MAC (Titans eq. 26-28):

    g = sigmoid(gain * RMSNorm(memory_out)),   out = attention_out * g

``gain`` is stored as log(gain) in fp32: the TNT-Atlas seed lost six runs to a bf16 gain
parameter at 5.0 whose resolution (~0.03) swallowed every 1e-5 update.  The last gate
values are kept for monitors when ``record`` is on (gate collapse shows up here first:
the Atlas 300M seed's gate fell from 50 % to 0.7 % over 76k steps).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..memory.rule.axes import at_least_fp32


def whole(parameter: torch.Tensor) -> torch.Tensor:
    """A parameter's full value, also when FSDP2 shards it (a collective: call on every rank)."""
    parameter = parameter.detach()
    return parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter


class MemoryGate(nn.Module):
    def __init__(self, dim: int, gain_init: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=eps)
        # shape (1,), not a scalar: FSDP2 cannot shard 0-d parameters
        self.log_gain = nn.Parameter(torch.tensor([math.log(gain_init)]))
        self.record = False  # keep the last values (detached) for monitors
        self.keep_graph = False  # keep the last gate with its graph, for a regulariser's loss term
        self.last_gate: torch.Tensor | None = None
        self.last_preactivation: torch.Tensor | None = None

    @property
    def gain(self) -> float:
        return float(whole(self.log_gain).exp())

    def forward(self, memory_out: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=memory_out.device.type, enabled=False):
            pre = self.log_gain.float().exp() * self.norm(at_least_fp32(memory_out))
            gate = torch.sigmoid(pre)
        if self.record or self.keep_graph:  # a regulariser needs the graph; a monitor the values
            self.last_gate = gate if self.keep_graph else gate.detach()
        if self.record:
            self.last_preactivation = pre.detach()
        return gate.to(memory_out.dtype)
