"""KL retention (Memora, Miras arXiv 2504.13173 sec. 5): the memory's weights stay on a
scaled simplex (each row c * softmax of logits) and learn by mirror descent,

    L_t = alpha_t L_{t-1} - theta_t grad l(W_{t-1});   W_t = c * softmax(L_t)  (rows)

The softmax is applied to the materialised logits at chunk ends.  Inside a chunk the
reads see the first-order step at uniform weights, W_0 - (c / d_in) sum theta grad, so
that with chunk size 1 the rule is Memora's exactly.

``center = true`` (not Memora's) shifts every row by its uniform point, W_t = c (softmax(L_t)
- 1/d_in), so rows sum to 0 and weights take both signs; the logits' update is unchanged.  On
the simplex every weight is positive: a row only averages its inputs, and a value of mixed
signs cannot be stored at any c (docs/memory.md, "The other paper memories").
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

import miraslab
from miraslab.api import ChunkEnd, Gates, Weights, at_least_fp32

from .decay import DecayGated


@attrs.frozen
class KLParams:
    scale: float = miraslab.param(1.0, gt=0, doc="c: each row of W sums to c (to 0 when centred)")
    init: float = miraslab.param(0.98, gt=0, le=1, doc="alpha_t (on the logits) at initialisation")
    center: bool = miraslab.param(False, doc="W = c * (softmax(L) - 1/d): rows sum to 0 (not Memora's)")


class KLRetention(DecayGated):
    """W = c * softmax(L) per row; L decays by alpha_t and takes gradient steps."""

    nonlinear = True
    needs_decayed_update = True
    takes_biases = False  # a (d_out, 1) bias's rows are one entry: its softmax would pin it to c

    def aux_log_alpha(self, gates: Gates) -> torch.Tensor:
        return gates["decay"]

    def _weights(self, logits: torch.Tensor) -> torch.Tensor:
        weights = self.params.scale * torch.softmax(at_least_fp32(logits), dim=-1)
        return weights - self.params.scale / logits.shape[-1] if self.params.center else weights

    def initial(self, learned: Weights) -> tuple[Weights, dict[str, Any]]:
        return {n: self._weights(z) for n, z in learned.items()}, {"logits": dict(learned)}

    def lr_scale(self, extra: dict[str, Any], name: str) -> float:
        return self.params.scale / extra["logits"][name].shape[-1]

    def chunk_end(self, end: ChunkEnd):
        decay = torch.exp(end.aux_log_decay)[..., None, None]
        logits = {n: decay * z + end.decayed_update[n] for n, z in end.extra["logits"].items()}
        return {n: self._weights(z) for n, z in logits.items()}, end.momentum, {**end.extra, "logits": logits}


@miraslab.hookimpl
def register_retentions(register):
    register("kl", KLRetention, KLParams)
