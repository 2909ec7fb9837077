"""M3 mixing (the TNT-Atlas seed): a learned balance between the global and the local memories,

    out = alpha * global + (1 - alpha) * mean(locals),   alpha = sigmoid(a)

``a`` is kept in fp32 and ``alpha`` is exposed for monitoring: the seed's guardrail stopped
runs whose alpha collapsed to 0 or 1 (one memory ignored).
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn

import miraslab
from miraslab.api import whole


@attrs.frozen
class M3Params:
    alpha_init: float = miraslab.param(0.5, gt=0, lt=1, doc="alpha (weight of the global memory) at init")


class M3Mixer(nn.Module):
    """alpha * global + (1 - alpha) * mean(locals)."""

    def __init__(self, params: M3Params, dim: int, n_memories: int):
        super().__init__()
        self.logit = nn.Parameter(
            torch.tensor([math.log(params.alpha_init / (1 - params.alpha_init))])
        )  # (1,): FSDP2

    @property
    def alpha(self) -> float:
        return float(torch.sigmoid(whole(self.logit)))

    def forward(self, reads: list[torch.Tensor]) -> torch.Tensor:
        global_read, locals_ = reads[0], reads[1:]
        alpha = torch.sigmoid(self.logit.float()).to(global_read.dtype)
        if not locals_:
            return global_read
        return alpha * global_read + (1 - alpha) * torch.stack(locals_).mean(0)


@miraslab.hookimpl
def register_mixers(register):
    register("m3", M3Mixer, M3Params)
