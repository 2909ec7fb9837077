"""SwiGLU feed-forward (Shazeer 2020): W2 (silu(W1 x) * W3 x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def default_hidden(dim: int) -> int:
    """8/3 of the width (same parameters as a 4x GELU MLP), rounded up to a multiple of 64."""
    return -(-(8 * dim // 3) // 64) * 64


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or default_hidden(dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))
