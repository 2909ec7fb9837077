"""Data-dependent forget gate (Titans eq. 13; Gated DeltaNet): W_t = alpha_t W_{t-1} + update,
alpha_t = sigmoid(w . x_t + b) per head, produced in log space.

``gradient_at = "previous"`` takes the inner gradient at W_{t-1} (Titans);
``"decayed"`` takes it at alpha_t W_{t-1}, which is the gated delta rule
S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T (arXiv 2412.06464).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

import miraslab
from miraslab.api import GateDef, Gates, Retention


@attrs.frozen
class DecayParams:
    init: float = miraslab.param(0.98, gt=0, lt=1, doc="alpha_t at initialisation (kept per token)")
    gradient_at: str = miraslab.param(
        "previous", choices=("previous", "decayed"), doc="where the inner gradient is taken"
    )


class DecayGated(Retention):
    """A retention with the gate ``decay``: alpha_t = sigmoid(w . x_t + b) per head (in log space),
    initialised at ``params.init``; what it decays is the subclass's."""

    def __init__(self, params: Any):  # any params with ``init``
        super().__init__()
        self.params = params

    def gates(self) -> list[GateDef]:
        return [GateDef("decay", "log_sigmoid", init=self.params.init)]


class ForgetGate(DecayGated):
    """alpha_t on the memory's weights: the forget gate of ``decay``, and the decay step that
    ``elastic_net`` and ``lq_norm`` retain by."""

    decay_gate = "decay"

    def log_alpha(self, gates: Gates) -> torch.Tensor:
        return gates["decay"]


class Decay(ForgetGate):
    """alpha_t = sigmoid(w . x_t + b): forget a fraction 1 - alpha_t of the memory per token."""

    def __init__(self, params: DecayParams):
        super().__init__(params)
        self.gradient_at_decayed = params.gradient_at == "decayed"


@miraslab.hookimpl
def register_retentions(register):
    register("decay", Decay, DecayParams)
