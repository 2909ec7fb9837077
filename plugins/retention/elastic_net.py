"""Elastic-net retention (Miras arXiv 2504.13173 sec. 3.3): l2 decay plus an l1 penalty,
whose proximal step is soft-thresholding,

    W_t = S_lambda(alpha_t W_{t-1} - theta_t grad l(W_{t-1})),  S_lambda(x) = sign(x) max(|x| - lambda, 0)

applied to the materialised weights at chunk ends; lambda is one learned scalar per layer
(log-parameterised, so it can move in bf16 too).
"""

from __future__ import annotations

import math

import attrs
import torch

import miraslab
from miraslab.api import ChunkEnd, at_least_fp32

from .decay import ForgetGate


@attrs.frozen
class ElasticNetParams:
    threshold: float = miraslab.param(1e-3, gt=0, doc="lambda at initialisation")
    learn_threshold: bool = miraslab.param(True, doc="learn lambda")
    init: float = miraslab.param(0.98, gt=0, lt=1, doc="alpha_t at initialisation")


class ElasticNet(ForgetGate):
    """Decay alpha_t, then soft-threshold by lambda at chunk ends."""

    nonlinear = True

    def __init__(self, params: ElasticNetParams):
        super().__init__(params)
        log_threshold = torch.tensor([math.log(params.threshold)])  # (1,): FSDP2 cannot shard 0-d
        if params.learn_threshold:
            self.log_threshold = torch.nn.Parameter(log_threshold)
        else:
            self.register_buffer("log_threshold", log_threshold)

    def chunk_end(self, end: ChunkEnd):
        threshold = torch.exp(at_least_fp32(self.log_threshold))
        weights = {n: torch.sign(w) * torch.relu(w.abs() - threshold) for n, w in end.weights.items()}
        return weights, end.momentum, end.extra


@miraslab.hookimpl
def register_retentions(register):
    register("elastic_net", ElasticNet, ElasticNetParams)
