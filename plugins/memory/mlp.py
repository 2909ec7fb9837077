"""Deep memory (Titans sec. 3.1): a residual two-layer MLP, M(x) = x + W2 act(W1 x); ``bias = true``
makes both maps affine (W h + b, as TTT-MLP has them)."""

from __future__ import annotations

from typing import Any

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


def residual_param() -> Any:
    """The ``residual`` option of a residual memory."""
    return miraslab.param(True, doc="add the input to the output (needs d_in == d_out)")


def bias_param() -> Any:
    """The ``bias`` option of a memory whose maps can be affine."""
    return miraslab.param(False, doc="affine maps W h + b, each b an inner weight the memory learns")


@attrs.frozen
class MLPParams:
    expansion: int = miraslab.param(4, ge=1, doc="hidden width as a multiple of the input width")
    activation: str = miraslab.param("gelu", choices=tuple(ACTIVATIONS), doc="hidden activation")
    residual: bool = residual_param()
    bias: bool = bias_param()


class ResidualMLP(MemoryArchitecture):
    """What the MLP memories share: M(x) = x + W2 f(x) (``residual``; else W2 f(x)), with f(x) made
    from the maps ``inputs`` (hidden width expansion * d_in, from d_in) and W2 back to d_out.
    ``params``: any with ``expansion``, ``residual`` and ``bias``; ``name`` and ``remedy`` for the
    refusal of a residual with two widths."""

    def __init__(
        self,
        name: str,
        params: Any,
        heads: int,
        d_in: int,
        d_out: int,
        inputs: tuple[str, ...],
        remedy: str = "",
    ):
        super().__init__(heads, d_in, d_out)
        if params.residual:
            check_residual_width(name, d_in, d_out, remedy)
        hidden = params.expansion * d_in
        self.residual = params.residual
        for map_in in inputs:
            self.make_init(map_in, hidden, d_in, bias=params.bias)
        self.make_init("w2", d_out, hidden, bias=params.bias)

    def output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """M(x) from x and y = W2 f(x): the residual adds no weight."""
        return x + y if self.residual else y


class MLPMemory(ResidualMLP):
    """Residual 2-layer MLP memory, hidden width expansion * d_in."""

    def __init__(self, params: MLPParams, heads: int, d_in: int, d_out: int):
        super().__init__(
            "mlp", params, heads, d_in, d_out, ("w1",), " or use a feature map that keeps the width"
        )
        self.act = ACTIVATIONS[params.activation]
        self.act_backward = BACKWARDS[params.activation]

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        return self.output(x, linear("w2", self.act(linear("w1", x))))

    def analytic_factors(self, x, linear, transposed, dloss):
        z1 = linear("w1", x)
        hidden = self.act(z1)
        y = linear("w2", hidden)
        delta2 = dloss(self.output(x, y))
        delta1 = self.act_backward(transposed("w2", delta2), z1)
        return {"w1": (x, delta1), "w2": (hidden, delta2)}


@miraslab.hookimpl
def register_memories(register):
    register("mlp", MLPMemory, MLPParams)
