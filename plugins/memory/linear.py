"""Matrix memory M(x) = W x: the linear memory of DeltaNet, linear attention and Titans' LMM-1."""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import Linear, MemoryArchitecture


@attrs.frozen
class LinearParams:
    init: str = miraslab.param("zeros", choices=("zeros", "normal"), doc="learned initial W (W_init)")


class LinearMemory(MemoryArchitecture):
    """Matrix memory M(x) = W x (d_out x d_in per head)."""

    linear_map = True

    def __init__(self, params: LinearParams, heads: int, d_in: int, d_out: int):
        super().__init__(heads, d_in, d_out)
        self.make_init("w", d_out, d_in, std=0.0 if params.init == "zeros" else d_in**-0.5)

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        return linear("w", x)

    def analytic_factors(self, x, linear, transposed, dloss):
        return {"w": (x, dloss(linear("w", x)))}  # grad_W l = (dl/dy) x^T


@miraslab.hookimpl
def register_memories(register):
    register("linear", LinearMemory, LinearParams)
