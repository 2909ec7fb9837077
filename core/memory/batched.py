"""Matmuls over any leading (batch) dimensions."""

from __future__ import annotations

import torch


def matmul_add(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """base + alpha * a @ b in one fused kernel (no separate add pass); a, b (..., n, k), (..., k, m).

    Leading dimensions broadcast like ``torch.matmul``'s; ``base`` has the result's shape.
    """
    if base.dim() == 3 and a.dim() == 3 and b.dim() == 3:
        return torch.baddbmm(base, a, b, alpha=alpha)
    if base.shape[:-2] == a.shape[:-2] == b.shape[:-2]:  # the usual case: no broadcast to resolve
        out = torch.baddbmm(base.flatten(0, -3), a.flatten(0, -3), b.flatten(0, -3), alpha=alpha)
        return out.view(base.shape)
    lead = torch.broadcast_shapes(base.shape[:-2], a.shape[:-2], b.shape[:-2])

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.expand(*lead, *x.shape[-2:]).reshape(-1, *x.shape[-2:])

    out = torch.baddbmm(flat(base), flat(a), flat(b), alpha=alpha)
    return out.view(*lead, *out.shape[-2:])
