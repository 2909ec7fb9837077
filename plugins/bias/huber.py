"""Huber attentional bias (Yaad, Miras arXiv 2504.13173 sec. 5): an l2 step while
||M(k) - v|| <= delta_t, else delta_t times the l1 step, so outliers cannot dominate.

    l = 1/2 ||e||^2             if ||e|| <= delta_t
    l = delta_t * sum_c |e_c|   otherwise         (|e| smoothed as sqrt(e^2 + eps^2))

delta_t is a constant, or a data-dependent gate (softplus of a projection of x_t).
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import AttentionalBias, GateDef, Gates, at_least_fp32


@attrs.frozen
class HuberParams:
    delta: float = miraslab.param(1.0, gt=0, doc="threshold (initial value when data-dependent)")
    data_dependent: bool = miraslab.param(False, doc="delta_t from the input (a softplus gate)")
    eps: float = miraslab.param(1e-3, gt=0, doc="smoothing of |e| in the l1 branch")


class HuberBias(AttentionalBias):
    """l2 inside ||e|| <= delta, delta * l1 outside."""

    def __init__(self, params: HuberParams):
        super().__init__()
        self.params = params

    def gates(self) -> list[GateDef]:
        if self.params.data_dependent:
            return [GateDef("huber_delta", "softplus", init=self.params.delta)]
        return []

    def loss(self, pred: torch.Tensor, target: torch.Tensor, gates: Gates) -> torch.Tensor:
        error = at_least_fp32(pred - target)
        if self.params.data_dependent:
            delta = at_least_fp32(gates["huber_delta"])
        else:
            delta = torch.full(error.shape[:-1], self.params.delta, device=error.device)
        inside = error.norm(dim=-1) <= delta
        l2 = 0.5 * error.pow(2).sum(-1)
        l1 = delta * (error.pow(2) + self.params.eps**2).sqrt().sum(-1)
        return torch.where(inside, l2, l1)

    def gradient(self, pred, target, gates):
        error = at_least_fp32(pred - target)
        if self.params.data_dependent:
            delta = at_least_fp32(gates["huber_delta"])
        else:
            delta = torch.full(error.shape[:-1], self.params.delta, device=error.device, dtype=error.dtype)
        inside = (error.norm(dim=-1) <= delta).unsqueeze(-1)
        l1_step = delta.unsqueeze(-1) * error / (error.pow(2) + self.params.eps**2).sqrt()
        return torch.where(inside, error, l1_step).to(pred.dtype)

    def reference_gradient(self, weight, key, value, gates):
        """For the kit (Yaad): with e = W k - v, the l2 step e k^T while ||e|| <= delta_t, else
        delta_t (e / sqrt(e^2 + eps^2)) k^T, the smoothed l1 step."""
        error = torch.einsum("bhoi,bhi->bho", weight, key) - value
        delta = (
            gates["huber_delta"]
            if self.params.data_dependent
            else torch.full_like(error[..., 0], self.params.delta)
        )
        l1_step = delta[..., None] * error / (error.pow(2) + self.params.eps**2).sqrt()
        step = torch.where((error.norm(dim=-1) <= delta)[..., None], error, l1_step)
        return step[..., :, None] * key[..., None, :]


@miraslab.hookimpl
def register_biases(register):
    register("huber", HuberBias, HuberParams)
