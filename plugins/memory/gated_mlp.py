"""Gated MLP memory (Atlas++ / DeepTransformers, arXiv 2505.23735):
M(x) = x + W2 (act(W1 x) * W3 x), a SwiGLU block as the memory; ``bias = true`` makes each map
W h + b."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

import miraslab
from miraslab.api import Linear

from .mlp import ResidualMLP, bias_param, residual_param


@attrs.frozen
class GatedMLPParams:
    expansion: int = miraslab.param(2, ge=1, doc="hidden width as a multiple of the input width")
    residual: bool = residual_param()
    bias: bool = bias_param()


class GatedMLPMemory(ResidualMLP):
    """Residual SwiGLU memory: x + W2 (silu(W1 x) * W3 x)."""

    def __init__(self, params: GatedMLPParams, heads: int, d_in: int, d_out: int):
        super().__init__("gated_mlp", params, heads, d_in, d_out, ("w1", "w3"))

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        return self.output(x, linear("w2", F.silu(linear("w1", x)) * linear("w3", x)))

    def analytic_factors(self, x, linear, transposed, dloss):
        z1, z3 = linear("w1", x), linear("w3", x)
        sig = torch.sigmoid(z1)
        silu = z1 * sig
        hidden = silu * z3
        y = linear("w2", hidden)
        delta2 = dloss(self.output(x, y))
        back = transposed("w2", delta2)
        delta1 = back * z3 * sig * (1 + z1 * (1 - sig))  # silu'(z) = s (1 + z (1 - s))
        delta3 = back * silu
        return {"w1": (x, delta1), "w3": (x, delta3), "w2": (hidden, delta2)}


@miraslab.hookimpl
def register_memories(register):
    register("gated_mlp", GatedMLPMemory, GatedMLPParams)
