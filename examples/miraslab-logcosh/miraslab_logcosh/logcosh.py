"""Log-cosh attentional bias: l(M; k, v) = sum_c log cosh(a e_c) / a^2, e = M(k) - v.

dl/de = tanh(a e) / a: ~e near 0 (the l2 step), bounded by 1/a (an l1-like step) far away.
"""

from __future__ import annotations

import math

import attrs
import torch

import miraslab
from miraslab.api import AttentionalBias, Gates, at_least_fp32

MIRASLAB_PLUGIN_API = ">=1,<2"


@attrs.frozen
class LogCoshParams:
    sharpness: float = miraslab.param(1.0, gt=0, doc="a: errors beyond ~1/a take bounded steps")


def log_cosh(x: torch.Tensor) -> torch.Tensor:
    """log cosh x = |x| + log1p(exp(-2|x|)) - log 2, exact without overflow for large |x|."""
    ax = x.abs()
    return ax + torch.log1p(torch.exp(-2 * ax)) - math.log(2.0)


class LogCoshBias(AttentionalBias):
    """sum_c log cosh(a (M(k) - v)_c) / a^2."""

    def __init__(self, params: LogCoshParams):
        super().__init__()
        self.a = params.sharpness

    def loss(self, pred: torch.Tensor, target: torch.Tensor, gates: Gates) -> torch.Tensor:
        error = at_least_fp32(pred - target)
        return log_cosh(self.a * error).sum(-1) / self.a**2

    def gradient(self, pred: torch.Tensor, target: torch.Tensor, gates: Gates) -> torch.Tensor:
        error = at_least_fp32(pred - target)
        return (torch.tanh(self.a * error) / self.a).to(pred.dtype)


@miraslab.hookimpl
def register_biases(register):
    register("logcosh", LogCoshBias, LogCoshParams)
