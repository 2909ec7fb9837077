"""Data-dependent gates: small projections from the layer input, per head.

Gate parameters and arithmetic stay in fp32 even under bf16 autocast: a bf16 gate bias
near 5.0 has a resolution of ~0.03 and cannot take a 1e-5 optimizer step (the TNT-Atlas
seed lost six runs to exactly that).  Decays are produced in log space (logsigmoid), so
alpha close to 1 keeps its precision through cumulative products.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rule.axes import GateDef, Gates


def inverse_activation(definition: GateDef) -> float:
    """The pre-activation that gives the gate its ``init`` value."""
    value = definition.init / definition.scale
    if definition.activation in ("sigmoid", "log_sigmoid"):
        value = min(max(value, 1e-6), 1 - 1e-6)
        return math.log(value / (1 - value))
    return math.log(math.expm1(max(value, 1e-6)))  # softplus


class GateProjections(nn.Module):
    """One projection per gate; ``forward(x)`` returns {name: (B, H, T) or (B, H, T, d_v)}."""

    def __init__(self, dim: int, heads: int, definitions: list[GateDef], d_value: int, rank: int):
        super().__init__()
        names = [d.name for d in definitions]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"two memory components both define the gate(s) {duplicated}")
        self.heads, self.d_value = heads, d_value
        self.definitions = {d.name: d for d in definitions}
        self.proj = nn.ModuleDict()
        for d in definitions:
            width = heads * d_value if d.channelwise else heads
            if d.channelwise:
                down = nn.Linear(dim, rank, bias=False)
                up = nn.Linear(rank, width)
                nn.init.normal_(down.weight, std=dim**-0.5)
                nn.init.normal_(up.weight, std=0.1 * rank**-0.5)
                nn.init.constant_(up.bias, inverse_activation(d))
                self.proj[d.name] = nn.Sequential(down, up)
            else:
                linear = nn.Linear(dim, width)
                nn.init.normal_(linear.weight, std=0.1 * dim**-0.5)
                nn.init.constant_(linear.bias, inverse_activation(d))
                self.proj[d.name] = linear
        self.record = False  # monitors switch this on to keep the last pre-activations
        self.last_preactivations: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> Gates:
        batch, seq, _ = x.shape
        out: Gates = {}
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = x.to(torch.promote_types(x.dtype, torch.float32))
            for name, proj in self.proj.items():
                d = self.definitions[name]
                z = proj(x32)
                if d.channelwise:
                    z = z.view(batch, seq, self.heads, self.d_value).permute(0, 2, 1, 3)
                else:
                    z = z.view(batch, seq, self.heads).transpose(1, 2)
                if self.record:
                    self.last_preactivations[name] = z.detach()
                if d.activation == "sigmoid":
                    out[name] = d.scale * torch.sigmoid(z)
                elif d.activation == "log_sigmoid":
                    out[name] = F.logsigmoid(z)
                else:
                    out[name] = d.scale * F.softplus(z)
        return out
