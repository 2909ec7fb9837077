"""A constant forget gate: W_t = rate * W_{t-1} + (update), the same alpha for every token.

The simplest retention of the Miras framework (arXiv 2504.13173, sec. 3): a fixed decay
instead of Titans' data-dependent alpha_t (eq. 13).  It defines no gate of its own; the
engine consumes log alpha_t with the (batch, heads, tokens) shape of the other gates.
"""

from __future__ import annotations

import math

import attrs
import torch

import miraslab
from miraslab import param
from miraslab.api import Gates, Retention


@attrs.frozen
class ForgetParams:
    rate: float = param(0.9, gt=0, lt=1, doc="fraction of the memory kept per token")


class ConstantForget(Retention):
    """alpha_t = rate for every token and head."""

    def __init__(self, params: ForgetParams):
        super().__init__()
        self.log_rate = math.log(params.rate)

    def log_alpha(self, gates: Gates) -> torch.Tensor:
        if not gates:
            raise ValueError("acme_forget needs at least one gate to know the (batch, heads, tokens) shape")
        reference = next(iter(gates.values()))  # (B, H, T) or channel-wise (B, H, T, d_v)
        return reference.new_full(reference.shape[:3], self.log_rate)


@miraslab.hookimpl
def register_retentions(register):
    register("acme_forget", ConstantForget, ForgetParams)
