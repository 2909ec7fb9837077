"""l2 attentional bias: l(M; k, v) = 1/2 ||M(k) - v||^2 (Titans eq. 12; with a linear memory and
gradient descent this is the delta rule)."""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import AttentionalBias, Gates


@attrs.frozen
class L2Params:
    pass


class L2Bias(AttentionalBias):
    """1/2 ||M(k) - v||^2; its gradient for M(k) = W k is (W k - v) k^T."""

    def __init__(self, params: L2Params):
        super().__init__()

    def loss(self, pred: torch.Tensor, target: torch.Tensor, gates: Gates) -> torch.Tensor:
        return 0.5 * (pred - target).pow(2).sum(-1)

    def gradient(self, pred, target, gates):
        return pred - target

    gradient_slope = 1.0

    def reference_gradient(self, weight, key, value, gates):
        """For the kit: grad_W 1/2 ||W k - v||^2 = (W k - v) k^T, on plain tensors."""
        error = torch.einsum("bhoi,bhi->bho", weight, key) - value
        return error[..., :, None] * key[..., None, :]

    def gradient_offset(self, target, gates):
        return -target


@miraslab.hookimpl
def register_biases(register):
    register("l2", L2Bias, L2Params)
