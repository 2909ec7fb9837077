"""The Omega rule (ATLAS, arXiv 2505.23735 eq. 9): memorise the context, not the token.

    min_M  sum_{i=t-c+1..t} gamma_i * omega^(t-i) * l_inner(M; phi(k_i), v_i)

so each step uses the gradients of the last c tokens (all taken at the current chunk's
start weights), each weighted by an input-dependent gate gamma_i and an optional
exponential decay omega (the Atlas-MAG seed's decay_base).  With c = 1 and no gate it is
exactly the inner bias.
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import AttentionalBias, BiasComponent, GateDef, Gates, RecipeError, component_field


@attrs.frozen
class OmegaParams:
    window: int = miraslab.param(16, ge=1, doc="context window c of the Omega rule")
    inner: BiasComponent = component_field("bias", "l2", "the bias summed over the window")
    gated: bool = miraslab.param(True, doc="input-dependent gates gamma_i in (0, 2), 1/c at init")
    decay_base: float = miraslab.param(1.0, gt=0, le=1, doc="omega: weight omega^(t-i) of older tokens")


class OmegaBias(AttentionalBias):
    """Window of c tokens over an inner bias, gated per token."""

    def __init__(self, params: OmegaParams):
        super().__init__()
        if params.inner.name == "omega":
            raise RecipeError(["bias omega: inner may not be omega itself"])
        self.inner = miraslab.build_component(params.inner)
        self.window = params.window
        self.window_decay = params.decay_base
        self.window_gate = "omega" if params.gated else None

    def gates(self) -> list[GateDef]:
        # gamma in (0, 2), starting at 1/c so that the window's total weight starts at 1
        own = [GateDef("omega", "sigmoid", init=1.0 / self.window, scale=2.0)] if self.window_gate else []
        return [*self.inner.gates(), *own]

    def loss(self, pred: torch.Tensor, target: torch.Tensor, gates: Gates) -> torch.Tensor:
        return self.inner.loss(pred, target, gates)

    def gradient(self, pred, target, gates):
        return self.inner.gradient(pred, target, gates)

    @property
    def gradient_slope(self):
        return self.inner.gradient_slope

    def gradient_offset(self, target, gates):
        return self.inner.gradient_offset(target, gates)


@miraslab.hookimpl
def register_biases(register):
    register("omega", OmegaBias, OmegaParams)
