"""Titans' surprise with momentum (arXiv 2501.00663 eq. 10 and 13-14):

    S_t = eta_t S_{t-1} - theta_t grad l(M_{t-1}; x_t)      (past + momentary surprise)
    M_t = alpha_t M_{t-1} + S_t

with eta_t and theta_t data-dependent gates per head.
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import GateDef, Gates, LearningAlgorithm


@attrs.frozen
class MomentumParams:
    # momentum multiplies the effective step by ~1 / (1 - eta): smaller rates than gd (Titans uses <= 1e-2)
    lr_init: float = miraslab.param(0.01, gt=0, doc="theta_t at initialisation")
    lr_max: float = miraslab.param(0.1, gt=0, doc="upper bound of theta_t")
    normalized: bool = miraslab.param(
        True, doc="divide each gradient by the squared norm of the memory's inputs (normalised LMS)"
    )
    momentum: float = miraslab.param(0.9, gt=0, lt=1, doc="eta_t at initialisation")

    def cross_check(self) -> None:
        if self.lr_init >= self.lr_max:
            raise miraslab.api.ParamValueError("lr_init", f"a number < lr_max ({self.lr_max})", self.lr_init)


class Momentum(LearningAlgorithm):
    """Gradient descent with data-dependent momentum eta_t (Titans' surprise)."""

    momentum = True
    momentum_gate = "momentum"

    def __init__(self, params: MomentumParams):
        super().__init__()
        self.params = params
        self.normalized = params.normalized

    def gates(self) -> list[GateDef]:
        return [
            GateDef("lr", "sigmoid", init=self.params.lr_init, scale=self.params.lr_max),
            GateDef("momentum", "log_sigmoid", init=self.params.momentum),
        ]

    def log_eta(self, gates: Gates) -> torch.Tensor:
        return gates["momentum"]

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors, for the kit (Titans eq. 10, 13-14); the state is S_{t-1}:

        S_t = eta_t S_{t-1} - theta_t g_t,   W_t = alpha_t W_{t-1} + S_t   (S_0 = 0)
        """
        theta, eta = gates["lr"][..., None, None], torch.exp(gates["momentum"])[..., None, None]
        surprise = -theta * grad if state is None else eta * state - theta * grad
        return alpha[..., None, None] * weight + surprise, surprise


@miraslab.hookimpl
def register_algorithms(register):
    register("momentum", Momentum, MomentumParams)
