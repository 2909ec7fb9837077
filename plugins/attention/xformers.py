"""xFormers ``memory_efficient_attention`` (Rabe & Staats, arXiv 2112.05682) on CUDA; an
optional extra: ``pip install 'miraslab[xformers]'``.

The attention bias is the cheapest one that states the visibility rule: xformers' own
causal or local (sliding window) masks when the keys are the queries' consecutive history,
which its kernels apply without reading a bias from memory; otherwise (persistent or prefix
keys) an additive bias tensor, 0 where visible and -inf elsewhere.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import attrs
import torch

import miraslab
from miraslab.api import AttentionBackend, Visibility

NOT_INSTALLED = "xformers is not installed: pip install 'miraslab[xformers]'"


@attrs.frozen
class XformersParams:
    pass


def _xformers_ops() -> ModuleType:
    """``xformers.ops``, imported on first use so that miraslab does not need xformers."""
    import xformers.ops

    return xformers.ops


class XformersAttention(AttentionBackend):
    """softmax(q k^T / sqrt(d) + bias) v with xformers.ops.memory_efficient_attention."""

    def __init__(self, params: XformersParams):
        super().__init__()

    def unavailable_reason(self, device: torch.device) -> str | None:
        # the device first: installing xformers would not help a CPU run
        if device.type != "cuda":
            return f"xformers needs a CUDA device; this run is on {device.type}"
        try:
            _xformers_ops()
        except ImportError:
            return NOT_INSTALLED
        return None

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visibility: Visibility
    ) -> torch.Tensor:
        xops = _xformers_ops()
        bias = self._attn_bias(q, visibility)
        # xformers takes (B, T, H, d); these transposes are views with unit stride in d
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias
        )
        return out.transpose(1, 2)

    def _attn_bias(self, q: torch.Tensor, visibility: Visibility) -> Any:
        from xformers.ops.fmha import attn_bias

        batch, heads, n_queries, _ = q.shape
        n_keys, window = visibility.n_keys, visibility.window
        if visibility.documents:  # packed documents: a block-diagonal mask per row
            padded = -(-n_keys // 8) * 8
            bias = torch.full((batch, 1, n_queries, padded), float("-inf"), dtype=q.dtype, device=q.device)
            bias = bias[..., :n_keys]
            bias.masked_fill_(visibility.mask(), 0.0)
            return bias.expand(batch, heads, n_queries, n_keys)
        if visibility.aligned:
            if window == 0 and n_queries == n_keys:
                return attn_bias.LowerTriangularMask()
            if window == 0:  # a KV cache: the last query sees the last key
                return attn_bias.LowerTriangularFromBottomRightMask()
            # query i sees key indices [i + shift - (window - 1), i + shift]
            return attn_bias.LocalAttentionFromBottomRightMask(window_left=window - 1, window_right=0)
        # xformers needs every stride of a bias tensor but the last to be a multiple of 8
        # elements (16 bytes in half precision): allocate padded rows and slice
        padded = -(-n_keys // 8) * 8
        bias = torch.full((n_queries, padded), float("-inf"), dtype=q.dtype, device=q.device)[:, :n_keys]
        bias.masked_fill_(visibility.mask(), 0.0)
        return bias.expand(batch, heads, n_queries, n_keys)


@miraslab.hookimpl
def register_attentions(register):
    register("xformers", XformersAttention, XformersParams)
