"""KL retention (Memora, Miras arXiv 2504.13173 sec. 5): the memory's weights stay on a
scaled simplex (each row c * softmax of logits) and learn by mirror descent,

    L_t = alpha_t L_{t-1} - theta_t grad l(W_{t-1});   W_t = c * softmax(L_t)  (rows)

The softmax is applied to the materialised logits at chunk ends.  Inside a chunk the
reads see the first-order step at uniform weights, W_0 - (c / d_in) sum theta grad, so
that with chunk size 1 the rule is Memora's exactly.
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
    scale: float = miraslab.param(1.0, gt=0, doc="c: each row of W sums to c")
    init: float = miraslab.param(0.98, gt=0, le=1, doc="alpha_t (on the logits) at initialisation")


class KLRetention(DecayGated):
    """W = c * softmax(L) per row; L decays by alpha_t and takes gradient steps."""

    nonlinear = True
    needs_decayed_update = True
    takes_biases = False  # a (d_out, 1) bias's rows are one entry: its softmax would pin it to c

    def aux_log_alpha(self, gates: Gates) -> torch.Tensor:
        return gates["decay"]

    def initial(self, learned: Weights) -> tuple[Weights, dict[str, Any]]:
        weights = {n: self.params.scale * torch.softmax(at_least_fp32(z), dim=-1) for n, z in learned.items()}
        return weights, {"logits": dict(learned)}

    def lr_scale(self, extra: dict[str, Any], name: str) -> float:
        return self.params.scale / extra["logits"][name].shape[-1]

    def chunk_end(self, end: ChunkEnd):
        decay = torch.exp(end.aux_log_decay)[..., None, None]
        logits = {n: decay * z + end.decayed_update[n] for n, z in end.extra["logits"].items()}
        weights = {n: self.params.scale * torch.softmax(at_least_fp32(z), dim=-1) for n, z in logits.items()}
        return weights, end.momentum, {**end.extra, "logits": logits}


@miraslab.hookimpl
def register_retentions(register):
    register("kl", KLRetention, KLParams)
