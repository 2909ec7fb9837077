"""TTT-Linear's inner model (Sun et al. 2024, arXiv 2407.04620, sec. 2.7):
M(x) = x + LN(W x + b), LN per head with a learned gain and shift.

W and its bias b are the memory's state: ``make_init("w", ..., bias=True)`` declares both, and
the engine learns b in the inner loop beside W (its inner weight is "w_bias", (d, 1), zero at
the start, as TTT's b1).  The LayerNorm is a per-token function with outer parameters of its
own, ``ln_weight`` and ``ln_bias``, trained by the outer loss; ``no_weight_decay`` names them
(a norm's gain and shift, which weight decay would pull toward zero).
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

import miraslab
from miraslab.api import Linear, MemoryArchitecture, RecipeError

MIRASLAB_PLUGIN_API = ">=1,<2"


@attrs.frozen
class TTTLinearParams:
    init_std: float = miraslab.param(0.02, gt=0, doc="standard deviation of W_init (b starts at 0)")
    eps: float = miraslab.param(1e-6, gt=0, doc="LayerNorm epsilon")


class TTTLinearMemory(MemoryArchitecture):
    """x + LN(W x + b), per head; W and b are learned at test time."""

    no_weight_decay = ("ln_weight", "ln_bias")

    def __init__(self, params: TTTLinearParams, heads: int, d_in: int, d_out: int):
        super().__init__(heads, d_in, d_out)
        if d_in != d_out:
            raise RecipeError(
                [
                    f"memory ttt_linear: the residual needs the key width ({d_in}) to equal the value "
                    f"width ({d_out}); use a feature map that keeps the width"
                ]
            )
        self.eps = params.eps
        self.make_init("w", d_out, d_in, std=params.init_std, bias=True)
        self.ln_weight = nn.Parameter(torch.ones(heads, 1, d_out))  # (H, 1, d): broadcast over tokens
        self.ln_bias = nn.Parameter(torch.zeros(heads, 1, d_out))

    def _normalise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z - mean) / sqrt(var + eps) over a token's features, and 1 / sqrt(var + eps)."""
        centred = z - z.mean(-1, keepdim=True)
        inv_std = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps)
        return centred * inv_std, inv_std

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        normed, _ = self._normalise(linear("w", x))  # linear adds b: W x + b
        return x + normed * self.ln_weight.to(x.dtype) + self.ln_bias.to(x.dtype)

    def analytic_factors(self, x, linear, transposed, dloss):
        """dl/dz through the LayerNorm by hand, (dn - mean(dn) - n mean(dn n)) / sqrt(var + eps)
        with n the normalised z and dn = gain * dl/dy; the engine derives b's factor (1, dl/dz)."""
        normed, inv_std = self._normalise(linear("w", x))
        gain = self.ln_weight.to(x.dtype)
        dnormed = dloss(x + normed * gain + self.ln_bias.to(x.dtype)) * gain
        dz = inv_std * (
            dnormed - dnormed.mean(-1, keepdim=True) - normed * (dnormed * normed).mean(-1, keepdim=True)
        )
        return {"w": (x, dz)}


@miraslab.hookimpl
def register_memories(register):
    register("ttt_linear", TTTLinearMemory, TTTLinearParams)
