"""Matmuls over any leading (batch) dimensions."""

from __future__ import annotations

import torch


def matmul_add(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """base + alpha * a @ b in one fused kernel (no separate add pass); a, b (..., n, k), (..., k, m).

    Leading dimensions broadcast like ``torch.matmul``'s; ``base`` has the result's shape.
    """
    lead = torch.broadcast_shapes(base.shape[:-2], a.shape[:-2], b.shape[:-2])

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.expand(*lead, *x.shape[-2:]).reshape(-1, *x.shape[-2:])

    out = torch.baddbmm(flat(base), flat(a), flat(b), alpha=alpha)
    return out.view(*lead, *out.shape[-2:])
