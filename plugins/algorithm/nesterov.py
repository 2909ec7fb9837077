"""Exact Nesterov momentum as the memory's optimizer, in the form torch.optim.SGD(nesterov=True,
dampening=0) takes it (Sutskever et al. 2013's reformulation), with data-dependent gates:

    b_t = eta_t b_{t-1} + g_t                       (b_0 = 0)
    W_t = alpha_t W_{t-1} - theta_t (g_t + eta_t b_t)

theta_t ("lr") and eta_t ("momentum") are per-head gates; g_t is the attentional bias's
gradient at the chunk-start weights (Titans' mini-batch semantics).  The retention's alpha_t
multiplies W_{t-1} as it does for ``momentum`` (the buffer b_t itself is not decayed), so with
retention ``none`` this is SGD's rule token by token.  Exact Nesterov needs the buffer b as a
second weight-shaped state, which the engine's factored momentum S_t cannot express: it runs on
the general path (``stateful``).
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import AlgorithmState, GateDef, Gates, LearningAlgorithm, StateDef, Weights

from .momentum import MomentumParams


@attrs.frozen
class NesterovParams(MomentumParams):
    """As ``momentum``'s: lr_init, lr_max (theta_t), momentum (eta_t at initialisation), normalized."""


class Nesterov(LearningAlgorithm):
    """Nesterov's accelerated gradient with data-dependent lr theta_t and momentum eta_t."""

    stateful = True

    def __init__(self, params: NesterovParams):
        super().__init__()
        self.params = params
        self.normalized = params.normalized

    def gates(self) -> list[GateDef]:
        return [
            GateDef("lr", "sigmoid", init=self.params.lr_init, scale=self.params.lr_max),
            GateDef("momentum", "log_sigmoid", init=self.params.momentum),
        ]

    def state_defs(self) -> list[StateDef]:
        return [StateDef("buffer", "entry")]  # b_t, SGD's momentum_buffer

    def update(self, grad: Weights, state: AlgorithmState, gates: Gates) -> tuple[Weights, AlgorithmState]:
        theta, eta = self.lr(gates)[..., None, None], torch.exp(gates["momentum"])[..., None, None]
        buffer = {n: eta * state["buffer"][n] + g for n, g in grad.items()}  # b_t = eta_t b_{t-1} + g_t
        step = {n: -theta * (g + eta * buffer[n]) for n, g in grad.items()}  # -theta_t (g_t + eta_t b_t)
        return step, {"buffer": buffer}

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors, for the kit; the state is b_{t-1} (None: b_0 = 0)."""
        theta, eta = gates["lr"][..., None, None], torch.exp(gates["momentum"])[..., None, None]
        buffer = grad if state is None else eta * state + grad
        return alpha[..., None, None] * weight - theta * (grad + eta * buffer), buffer


@miraslab.hookimpl
def register_algorithms(register):
    register("nesterov", Nesterov, NesterovParams)
