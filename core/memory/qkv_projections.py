"""The input side of a Titans memory branch (Titans sec. 4.4): x -> q, k, v per head.

Linear projections, a short causal depthwise convolution over time (kernel 4 by default:
on associative recall it made the difference between 74 % and 100 % in a prototype
here), SiLU, and l2-normalised queries and keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.short_conv import causal_conv
from .kernels.split_heads import split_heads


class MemoryInputs(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        conv_kernel: int = 4,
        activation: str = "silu",
        qk_norm: bool = True,
    ):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.activation, self.qk_norm, self.conv_kernel = activation, qk_norm, conv_kernel
        inner = 3 * heads * head_dim
        self.qkv = nn.Linear(dim, inner, bias=False)
        if conv_kernel:
            self.conv = nn.Conv1d(inner, inner, conv_kernel, groups=inner, bias=True)

    def _convolve(
        self, qkv: torch.Tensor, past: torch.Tensor | None, activate: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Causal depthwise convolution (and SiLU); the last kernel-1 inputs carry over to the next call."""
        if not self.conv_kernel:
            return (F.silu(qkv) if activate else qkv), None
        return causal_conv(qkv, self.conv.weight.squeeze(1), self.conv.bias, past, silu=activate)

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor | None = None, convolve: bool = True):
        """x (B, T, dim) -> q, k, v (B, H, T, head_dim) and the convolution's carry.

        ``convolve=False`` skips the convolution: each token's q, k, v then depend on that
        token alone (MAC's retrieval queries, which must not mix tokens of a segment).
        """
        activate = self.activation == "silu"
        if convolve:
            qkv, carry = self._convolve(self.qkv(x), conv_state, activate)
        else:
            qkv, carry = self.qkv(x), conv_state
            qkv = F.silu(qkv) if activate else qkv
        q, k, v = split_heads(qkv, self.heads, self.qk_norm)
        return q, k, v, carry
