"""lq retention (Moneta, Miras arXiv 2504.13173 sec. 5):

    A_t = alpha_t A_{t-1} - theta_t grad l(W_{t-1})
    W_t = A_t / max(||A_t||_q, floor)^(q-2)

The normaliser is refreshed on the materialised state at every chunk end; inside a chunk
it stays at its chunk-start value, so the dynamics are linear there.  ``floor`` keeps a
zero-initialised memory from dividing by ~0 before it has stored anything.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

import miraslab
from miraslab.api import ChunkEnd, Weights, at_least_fp32

from .decay import ForgetGate


@attrs.frozen
class LqNormParams:
    q: float = miraslab.param(4.0, ge=1, doc="exponent of the normalising q-norm (Moneta uses q = 4)")
    floor: float = miraslab.param(1.0, gt=0, doc="smallest norm the normaliser divides by")
    init: float = miraslab.param(0.98, gt=0, lt=1, doc="alpha_t at initialisation")


class LqNorm(ForgetGate):
    """Decay alpha_t, then W = A / ||A||_q^(q-2) at chunk ends."""

    nonlinear = True

    def _normaliser(self, accumulator: torch.Tensor) -> torch.Tensor:
        q = self.params.q
        # the tiny offset keeps the gradient of the root finite for an all-zero accumulator
        norm = (at_least_fp32(accumulator).abs().pow(q).sum(dim=(-1, -2)) + 1e-30).pow(1 / q)
        return norm.clamp(min=self.params.floor).pow(q - 2)  # (B, H)

    def initial(self, learned: Weights) -> tuple[Weights, dict[str, Any]]:
        scales = {n: self._normaliser(a) for n, a in learned.items()}
        return {n: a / scales[n][..., None, None] for n, a in learned.items()}, {"scale": scales}

    def lr_scale(self, extra: dict[str, Any], name: str) -> torch.Tensor:
        return 1.0 / extra["scale"][name]

    def chunk_end(self, end: ChunkEnd):
        old = end.extra["scale"]
        weights, momentum, scales = {}, {} if end.momentum is not None else None, {}
        for name, w in end.weights.items():
            accumulator = w * old[name][..., None, None]
            scales[name] = self._normaliser(accumulator)
            weights[name] = accumulator / scales[name][..., None, None]
            if momentum is not None:  # momentum lives in W's units: rescale with the normaliser
                momentum[name] = end.momentum[name] * (old[name] / scales[name])[..., None, None]
        return weights, momentum, {**end.extra, "scale": scales}


@miraslab.hookimpl
def register_retentions(register):
    register("lq_norm", LqNorm, LqNormParams)
