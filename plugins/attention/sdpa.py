"""PyTorch's fused ``scaled_dot_product_attention``: the default backend, on CPU and GPU.

The plain causal case (keys are exactly the queries' own positions, no window) takes the
``is_causal`` path, which lets PyTorch pick its flash kernel; every other case (sliding
window, persistent or prefix keys, a KV cache) passes the boolean visibility mask.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

import miraslab
from miraslab.api import AttentionBackend, Visibility


@attrs.frozen
class SdpaParams:
    pass


class SdpaAttention(AttentionBackend):
    """softmax(q k^T / sqrt(d) + mask) v with torch.nn.functional.scaled_dot_product_attention."""

    def __init__(self, params: SdpaParams):
        super().__init__()

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visibility: Visibility
    ) -> torch.Tensor:
        if visibility.causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visibility.mask())


@miraslab.hookimpl
def register_attentions(register):
    register("sdpa", SdpaAttention, SdpaParams)
