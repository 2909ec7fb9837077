"""Rotary position embeddings (RoFormer, Su et al., arXiv 2104.09864, eq. 34).

Channel pair (x_i, x_{i + d/2}) of a query or key at position p is rotated by the angle
p * theta_i, theta_i = base^(-2i/d), so that q_m . k_n depends on m - n only:

    rope(x, p)_i       = x_i cos(p theta_i) - x_{i+d/2} sin(p theta_i)
    rope(x, p)_{i+d/2} = x_i sin(p theta_i) + x_{i+d/2} cos(p theta_i)

(the half-split pairing of GPT-NeoX and LLaMA).  The rotation is computed in float32 whatever
the input dtype: bfloat16 keeps 8 significant bits, so p * theta_0 = p is already inexact
at p = 257.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotates (B, H, T, d) queries or keys by their positions (T,), or (B, T) per row."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings rotate channel pairs: head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        # theta_i per device, always float32: not a buffer, so model.to(torch.bfloat16) cannot round it
        self._theta: dict[torch.device, torch.Tensor] = {}

    def theta(self, device: torch.device) -> torch.Tensor:
        """(d/2,) float32 frequencies theta_i = base^(-2i/d) on ``device``."""
        if device not in self._theta:
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
            self._theta[device] = (self.base**-exponents).to(device=device, dtype=torch.float32)
        return self._theta[device]

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # cos and sin are computed from the positions at hand rather than read from a table:
        # a table must know the largest position, which on a GPU costs a sync per call, and
        # a (T, d/2) outer product is small beside the attention it feeds
        angles = positions.to(torch.float32)[..., None] * self.theta(x.device)  # (T, d/2)
        if positions.dim() == 2:  # (B, T): each row's own positions (packed documents)
            angles = angles.unsqueeze(1)  # (B, 1, T, d/2)
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return rotated.to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base:g}"
