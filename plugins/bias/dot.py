"""Dot-product attentional bias: l(M; k, v) = -<M(k), v>.  Its gradient step adds v k^T:
Hebbian learning, i.e. (gated) linear attention with a linear memory (Miras sec. 3)."""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import AttentionalBias, Gates


@attrs.frozen
class DotParams:
    pass


class DotBias(AttentionalBias):
    """-<M(k), v>: the Hebbian rule W += theta v k^T."""

    def __init__(self, params: DotParams):
        super().__init__()

    def loss(self, pred: torch.Tensor, target: torch.Tensor, gates: Gates) -> torch.Tensor:
        return -(pred * target).sum(-1)

    def gradient(self, pred, target, gates):
        return -target.expand_as(pred)

    gradient_slope = 0.0

    def reference_gradient(self, weight, key, value, gates):
        """For the kit: grad_W -<W k, v> = -v k^T (Hebbian), on plain tensors."""
        return -value[..., :, None] * key[..., None, :]

    def gradient_offset(self, target, gates):
        return -target


@miraslab.hookimpl
def register_biases(register):
    register("dot", DotBias, DotParams)
