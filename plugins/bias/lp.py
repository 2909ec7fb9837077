"""lp attentional bias (Moneta, Miras arXiv 2504.13173 sec. 5):
l(M; k, v) = sum_c |M(k) - v|_c^p, with |e| smoothed as sqrt(e^2 + eps^2), so the gradient
is p * e * (e^2 + eps^2)^((p-2)/2) ~ p sign(e) |e|^(p-1)."""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import AttentionalBias, Gates, at_least_fp32


@attrs.frozen
class LpParams:
    p: float = miraslab.param(3.0, ge=1, doc="the norm's exponent (Moneta uses p = 3)")
    eps: float = miraslab.param(1e-3, gt=0, doc="smoothing of |e| and sign(e) near 0")


class LpBias(AttentionalBias):
    """sum |M(k) - v|^p with smooth absolute value."""

    def __init__(self, params: LpParams):
        super().__init__()
        self.p, self.eps = params.p, params.eps

    def loss(self, pred: torch.Tensor, target: torch.Tensor, gates: Gates) -> torch.Tensor:
        error = at_least_fp32(pred - target)
        return (error.pow(2) + self.eps**2).pow(self.p / 2).sum(-1)

    def gradient(self, pred, target, gates):
        error = at_least_fp32(pred - target)
        return (self.p * error * (error.pow(2) + self.eps**2).pow(self.p / 2 - 1)).to(pred.dtype)

    def reference_gradient(self, weight, key, value, gates):
        """For the kit (Moneta): grad_W sum_c |W k - v|_c^p = p (sign(e) |e|^(p-1)) k^T, e = W k - v,
        with |e| = sqrt(e^2 + eps^2) and sign(e) = e / |e|."""
        error = torch.einsum("bhoi,bhi->bho", weight, key) - value
        smooth_abs = (error.pow(2) + self.eps**2).sqrt()
        step = self.p * (error / smooth_abs) * smooth_abs.pow(self.p - 1)
        return step[..., :, None] * key[..., None, :]


@miraslab.hookimpl
def register_biases(register):
    register("lp", LpBias, LpParams)
