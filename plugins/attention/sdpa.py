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
from miraslab.api import AttentionBackend, keys_end_at_queries, visibility_mask


@attrs.frozen
class SdpaParams:
    pass


class SdpaAttention(AttentionBackend):
    """softmax(q k^T / sqrt(d) + mask) v with torch.nn.functional.scaled_dot_product_attention."""

    def __init__(self, params: SdpaParams):
        super().__init__()

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        window: int,
    ) -> torch.Tensor:
        # cheap shape tests first: the position check synchronises with the device
        if window == 0 and q.shape[-2] == k.shape[-2] and keys_end_at_queries(q_pos, k_pos):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visibility_mask(q_pos, k_pos, window))


@miraslab.hookimpl
def register_attentions(register):
    register("sdpa", SdpaAttention, SdpaParams)
