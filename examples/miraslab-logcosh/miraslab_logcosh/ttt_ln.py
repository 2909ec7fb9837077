"""TTT-Linear's inner model (Sun et al. 2024, arXiv 2407.04620, sec. 2.7) without its bias:
M(x) = x + LN(W x), LN per head with a learned gain and shift.

W is the memory's state (one linear map, "w"); the LayerNorm is a per-token function with
outer parameters of its own, trained by the outer loss and exempt from weight decay
(``no_weight_decay``).
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

import miraslab
from miraslab.api import Linear, MemoryArchitecture, RecipeError

MIRASLAB_PLUGIN_API = ">=1,<2"


@attrs.frozen
class TTTLayerNormParams:
    init_std: float = miraslab.param(0.02, gt=0, doc="standard deviation of W_init")
    eps: float = miraslab.param(1e-5, gt=0, doc="LayerNorm epsilon")


class TTTLayerNormMemory(MemoryArchitecture):
    """x + LN(W x), per head."""

    no_weight_decay = ("gain", "shift")  # LayerNorm's scale and shift: decaying them is a bias

    def __init__(self, params: TTTLayerNormParams, heads: int, d_in: int, d_out: int):
        super().__init__(heads, d_in, d_out)
        if d_in != d_out:
            raise RecipeError(
                [
                    f"memory ttt_ln: the residual needs the key width ({d_in}) to equal the value width ({d_out})"
                ]
            )
        self.eps = params.eps
        self.make_init("w", d_out, d_in, std=params.init_std)
        self.gain = nn.Parameter(torch.ones(heads, 1, d_out))  # (H, 1, d): broadcast over tokens
        self.shift = nn.Parameter(torch.zeros(heads, 1, d_out))

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        z = linear("w", x)
        mean = z.mean(-1, keepdim=True)
        var = (z - mean).pow(2).mean(-1, keepdim=True)
        normed = (z - mean) * torch.rsqrt(var + self.eps)
        return x + normed * self.gain.to(z.dtype) + self.shift.to(z.dtype)


@miraslab.hookimpl
def register_memories(register):
    register("ttt_ln", TTTLayerNormMemory, TTTLayerNormParams)
