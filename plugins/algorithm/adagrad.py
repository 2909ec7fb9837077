"""AdaGrad as the memory's optimizer (Duchi, Hazan & Singer 2011, diagonal form):

    G_t = G_{t-1} + g_t^2                       (G_0 = 0, elementwise)
    W_t = alpha_t W_{t-1} - theta_t g_t / (sqrt(G_t) + eps)

theta_t ("lr") is a per-head gate, alpha_t the retention's decay on W_{t-1}.  ``accumulate =
"row"`` keeps one G per output row of each weight, the mean of g_t^2 over the row (Adafactor's
factored second moment, one factor): d_in times less state.  With a constant lr and ``"entry"``
this is torch.optim.Adagrad token by token.
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import AlgorithmState, GateDef, Gates, LearningAlgorithm, StateDef, Weights

from .adam import root


@attrs.frozen
class AdaGradParams:
    lr_init: float = miraslab.param(0.01, gt=0, doc="theta_t at initialisation")
    lr_max: float = miraslab.param(0.1, gt=0, doc="upper bound of theta_t")
    eps: float = miraslab.param(1e-8, gt=0, doc="added to sqrt(G_t) in the denominator")
    accumulate: str = miraslab.param(
        "entry", choices=("entry", "row"), doc="one squared-gradient sum per weight entry, or per output row"
    )
    normalized: bool = miraslab.param(
        True, doc="divide each gradient by the squared norm of the memory's inputs (normalised LMS)"
    )

    def cross_check(self) -> None:
        if self.lr_init >= self.lr_max:
            raise miraslab.api.ParamValueError("lr_init", f"a number < lr_max ({self.lr_max})", self.lr_init)


class AdaGrad(LearningAlgorithm):
    """AdaGrad with a data-dependent lr theta_t: steps shrink where gradients have been large."""

    stateful = True

    def __init__(self, params: AdaGradParams):
        super().__init__()
        self.params = params
        self.normalized = params.normalized

    def gates(self) -> list[GateDef]:
        return [GateDef("lr", "sigmoid", init=self.params.lr_init, scale=self.params.lr_max)]

    def state_defs(self) -> list[StateDef]:
        return [StateDef("squares", self.params.accumulate)]  # G_t

    def _squares(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * grad if self.params.accumulate == "entry" else (grad * grad).mean(-1, keepdim=True)

    def update(self, grad: Weights, state: AlgorithmState, gates: Gates) -> tuple[Weights, AlgorithmState]:
        theta = self.lr(gates)[..., None, None]
        squares = {n: state["squares"][n] + self._squares(g) for n, g in grad.items()}  # G_t
        step = {n: -theta * g / (root(squares[n]) + self.params.eps) for n, g in grad.items()}
        return step, {"squares": squares}

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors, for the kit; the state is G_{t-1} (None: 0)."""
        squares = grad**2 if self.params.accumulate == "entry" else (grad**2).mean(-1, keepdim=True)
        if state is not None:
            squares = state + squares
        step = gates["lr"][..., None, None] * grad / (torch.sqrt(squares) + self.params.eps)
        return alpha[..., None, None] * weight - step, squares


@miraslab.hookimpl
def register_algorithms(register):
    register("adagrad", AdaGrad, AdaGradParams)
