"""Gradient descent: W_t = alpha_t W_{t-1} - theta_t grad l (the delta rule with l2 and a linear memory).

theta_t = lr_max * sigmoid(w . x_t + b), per head, or per value channel when
``model.memory.gates.channelwise_lr`` is on.
"""

from __future__ import annotations

import attrs

import miraslab
from miraslab.api import GateDef, LearningAlgorithm


@attrs.frozen
class GDParams:
    lr_init: float = miraslab.param(0.1, gt=0, doc="theta_t at initialisation")
    lr_max: float = miraslab.param(1.0, gt=0, doc="upper bound of theta_t")
    normalized: bool = miraslab.param(
        True, doc="divide each gradient by the squared norm of the memory's inputs (normalised LMS)"
    )

    def cross_check(self) -> None:
        if self.lr_init >= self.lr_max:
            raise miraslab.api.ParamValueError("lr_init", f"a number < lr_max ({self.lr_max})", self.lr_init)


class GradientDescent(LearningAlgorithm):
    """One gradient step per token with a data-dependent learning rate theta_t."""

    def __init__(self, params: GDParams):
        super().__init__()
        self.params = params
        self.normalized = params.normalized

    def gates(self) -> list[GateDef]:
        return [GateDef("lr", "sigmoid", init=self.params.lr_init, scale=self.params.lr_max)]

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors, for the kit: W_t = alpha_t W_{t-1} - theta_t g_t (no state)."""
        theta = gates["lr"][..., None, None]
        return alpha[..., None, None] * weight - theta * grad, None


@miraslab.hookimpl
def register_algorithms(register):
    register("gd", GradientDescent, GDParams)
