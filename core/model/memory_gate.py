"""The gate between attention and memory in MAG/MAC (Titans eq. 26-28):

    g = sigmoid(gain * RMSNorm(memory_out)),   out = attention_out * g

``gain`` is stored as log(gain) in fp32: the TNT-Atlas seed lost six runs to a bf16 gain
parameter at 5.0 whose resolution (~0.03) swallowed every 1e-5 update.  The last gate
values are kept for monitors when ``record`` is on (gate collapse shows up here first:
the Atlas 300M seed's gate fell from 50 % to 0.7 % over 76k steps).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from ..memory.gate_projections import GateProjections
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
        if self.record:
            self.last_gate, self.last_preactivation = gate.detach(), pre.detach()
        if self.keep_graph:
            self.last_gate = gate
        return gate.to(memory_out.dtype)


def recorded_gates(
    model: nn.Module,
) -> Iterator[tuple[str, nn.Module, str | None, torch.Tensor | None, torch.Tensor]]:
    """Every sigmoid-type gate the last forward recorded (``record`` on): (module name, module,
    the memory gate's name or None for a MAG/MAC gate, the gate's values or None, its
    pre-activations).  Softplus gates are left out: they have no linear region to be stuck in."""
    for name, module in model.named_modules():
        if isinstance(module, MemoryGate) and module.last_preactivation is not None:
            yield name, module, None, module.last_gate, module.last_preactivation
        elif isinstance(module, GateProjections):
            for gate, pre in module.last_preactivations.items():
                if module.definitions[gate].activation != "softplus":
                    yield name, module, gate, None, pre
