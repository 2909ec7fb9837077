"""Titans' surprise with momentum (arXiv 2501.00663 eq. 10 and 13-14):

    S_t = eta_t S_{t-1} - theta_t grad l(M_{t-1}; x_t)      (past + momentary surprise)
    M_t = alpha_t M_{t-1} + S_t

with eta_t and theta_t data-dependent gates per head.
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import GateDef, Gates

from ._learning_rate import LearningRateAlgorithm, lr_params, normalized_param


# momentum multiplies the effective step by ~1 / (1 - eta): smaller rates than gd (Titans uses <= 1e-2)
@attrs.frozen
class MomentumParams(lr_params(0.01, 0.1)):
    normalized: bool = normalized_param()
    momentum: float = miraslab.param(0.9, gt=0, lt=1, doc="eta_t at initialisation")


class MomentumGated(LearningRateAlgorithm):
    """An algorithm with the gates lr (theta_t) and momentum (eta_t), from ``MomentumParams``."""

    def gates(self) -> list[GateDef]:
        return [*super().gates(), GateDef("momentum", "log_sigmoid", init=self.params.momentum)]

    def rates(self, gates: Gates) -> tuple[torch.Tensor, torch.Tensor]:
        """theta_t and eta_t, (B, H, 1, 1) each: to scale one token's weight-shaped tensors."""
        return self.lr(gates)[..., None, None], torch.exp(gates["momentum"])[..., None, None]


class Momentum(MomentumGated):
    """Gradient descent with data-dependent momentum eta_t (Titans' surprise)."""

    momentum = True
    momentum_gate = "momentum"

    def log_eta(self, gates: Gates) -> torch.Tensor:
        return gates["momentum"]

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors, for the kit (Titans eq. 10, 13-14); the state is S_{t-1}:

        S_t = eta_t S_{t-1} - theta_t g_t,   W_t = alpha_t W_{t-1} + S_t   (S_0 = 0)
        """
        theta, eta = self.rates(gates)
        surprise = -theta * grad if state is None else eta * state - theta * grad
        return alpha[..., None, None] * weight + surprise, surprise


@miraslab.hookimpl
def register_algorithms(register):
    register("momentum", Momentum, MomentumParams)
