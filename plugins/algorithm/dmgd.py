"""Deep Momentum Gradient Descent (DMGD; Behrouz et al. 2025, "Nested Learning: The Illusion of
Deep Learning Architectures"), in its smallest form.

Nested Learning reads momentum as an associative memory that compresses past gradients, and
makes that memory deeper: W_{t} = W_{t-1} + m_t(g_t), with m(.) a learned model of the
gradients instead of a plain running sum.  Here the momentum keeps its linear accumulation and
its read-out is a learned linear map P (one (d_in, d_in) matrix per head and inner weight):

    b_t = eta_t b_{t-1} + g_t                   (b_0 = 0, the gradients' memory)
    W_t = alpha_t W_{t-1} - theta_t b_t P^T     (P: the momentum memory's learned map)

P is an outer parameter, identity at initialisation (then this is heavy-ball momentum with the
step theta_t b_t), trained by the outer loss through the inner loop like W_init.  The paper
trains m by an inner objective of its own (a third level); here the outer loss trains it.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

import miraslab
from miraslab.api import (
    AlgorithmState,
    GateDef,
    Gates,
    LearningAlgorithm,
    MemoryArchitecture,
    StateDef,
    Weights,
)

from .momentum import MomentumParams


@attrs.frozen
class DMGDParams(MomentumParams):
    """As ``momentum``'s: lr_init, lr_max (theta_t), momentum (eta_t at initialisation), normalized."""


class DeepMomentumGD(LearningAlgorithm):
    """Momentum whose read-out is a learned linear map P per inner weight (Nested Learning's DMGD)."""

    stateful = True

    def __init__(self, params: DMGDParams):
        super().__init__()
        self.params = params
        self.normalized = params.normalized
        self.readout = nn.ParameterDict()  # inner weight -> P, (heads, d_in, d_in)

    def attach(self, arch: MemoryArchitecture) -> None:
        for name, (_, d_in) in arch.shapes.items():
            self.readout[name] = nn.Parameter(torch.eye(d_in).expand(arch.heads, d_in, d_in).clone())

    def gates(self) -> list[GateDef]:
        return [
            GateDef("lr", "sigmoid", init=self.params.lr_init, scale=self.params.lr_max),
            GateDef("momentum", "log_sigmoid", init=self.params.momentum),
        ]

    def state_defs(self) -> list[StateDef]:
        return [StateDef("buffer", "entry")]  # b_t

    def update(self, grad: Weights, state: AlgorithmState, gates: Gates) -> tuple[Weights, AlgorithmState]:
        theta, eta = self.lr(gates)[..., None, None], torch.exp(gates["momentum"])[..., None, None]
        buffer = {n: eta * state["buffer"][n] + g for n, g in grad.items()}  # b_t = eta_t b_{t-1} + g_t
        step = {n: -theta * (b @ self.readout[n].transpose(-1, -2).to(b.dtype)) for n, b in buffer.items()}
        return step, {"buffer": buffer}

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors, for the kit; the state is b_{t-1} (None: b_0 = 0)."""
        theta, eta = gates["lr"][..., None, None], torch.exp(gates["momentum"])[..., None, None]
        buffer = grad if state is None else eta * state + grad
        readout = self.readout["w"].to(buffer.dtype)  # (H, d_in, d_in): the kit's linear memory
        return alpha[..., None, None] * weight - theta * torch.einsum(
            "bhoi,hji->bhoj", buffer, readout
        ), buffer


@miraslab.hookimpl
def register_algorithms(register):
    register("dmgd", DeepMomentumGD, DMGDParams)
