"""Deep memory (Titans sec. 3.1): a residual two-layer MLP, M(x) = x + W2 act(W1 x); ``bias = true``
makes both maps affine (W h + b, as TTT-MLP has them)."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

import miraslab
from miraslab.api import Linear, MemoryArchitecture, RecipeError

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}


def _silu_backward(grad: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return grad * s * (1 + z * (1 - s))


# grad * act'(z); gelu's is one fused (and twice-differentiable) kernel
BACKWARDS = {
    "gelu": torch.ops.aten.gelu_backward,
    "silu": _silu_backward,
    "relu": lambda grad, z: grad * (z > 0).to(grad.dtype),
}


def check_residual_width(memory: str, d_in: int, d_out: int, remedy: str = "") -> None:
    """x + f(x) adds the key to the value: refuse a residual memory whose widths differ."""
    if d_in != d_out:
        raise RecipeError(
            [
                f"memory {memory}: residual = true needs the key width ({d_in}) to equal the value width "
                f"({d_out}); set model.memory.memory.residual = false{remedy}"
            ]
        )


@attrs.frozen
class MLPParams:
    expansion: int = miraslab.param(4, ge=1, doc="hidden width as a multiple of the input width")
    activation: str = miraslab.param("gelu", choices=tuple(ACTIVATIONS), doc="hidden activation")
    residual: bool = miraslab.param(True, doc="add the input to the output (needs d_in == d_out)")
    bias: bool = miraslab.param(False, doc="affine maps W h + b, each b an inner weight the memory learns")


class MLPMemory(MemoryArchitecture):
    """Residual 2-layer MLP memory, hidden width expansion * d_in."""

    def __init__(self, params: MLPParams, heads: int, d_in: int, d_out: int):
        super().__init__(heads, d_in, d_out)
        if params.residual:
            check_residual_width("mlp", d_in, d_out, " or use a feature map that keeps the width")
        hidden = params.expansion * d_in
        self.residual = params.residual
        self.act = ACTIVATIONS[params.activation]
        self.act_backward = BACKWARDS[params.activation]
        self.make_init("w1", hidden, d_in, bias=params.bias)
        self.make_init("w2", d_out, hidden, bias=params.bias)

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        y = linear("w2", self.act(linear("w1", x)))
        return x + y if self.residual else y

    def analytic_factors(self, x, linear, transposed, dloss):
        z1 = linear("w1", x)
        hidden = self.act(z1)
        y = linear("w2", hidden)
        delta2 = dloss(x + y if self.residual else y)  # the residual adds no weight
        delta1 = self.act_backward(transposed("w2", delta2), z1)
        return {"w1": (x, delta1), "w2": (hidden, delta2)}


@miraslab.hookimpl
def register_memories(register):
    register("mlp", MLPMemory, MLPParams)
