"""RMS-normalise each head's read-out and lay the heads side by side, in one Function.

(B, H, T, d) -> (B, T, H d): y / rms(y) * weight written straight into the merged layout,
and a short hand-written backward.  Against RMSNorm's composite backward plus a transpose
and a copy through autograd it saves about 1.5 ms of a 68 ms linear memory layer's
forward+backward at seq 1024 here (interleaved A/B, 25 rounds).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _NormMerge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weight, eps: float):
        batch, heads, length, d = y.shape
        rstd = torch.linalg.vector_norm(y, dim=-1, keepdim=True).square_().div_(d).add_(eps).rsqrt_()
        out = torch.empty(batch, length, heads, d, dtype=y.dtype, device=y.device)
        # a view: writing it fills the merged layout (copy_, not out=, which dynamo refuses)
        out.permute(0, 2, 1, 3).copy_(torch.mul(y, rstd).mul_(weight.to(y.dtype)))
        ctx.save_for_backward(y, rstd, weight)
        return out.view(batch, length, heads * d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        y, rstd, weight = ctx.saved_tensors
        batch, heads, length, d = y.shape
        g = grad.view(batch, length, heads, d).permute(0, 2, 1, 3)
        unit = y * rstd
        grad_weight = (g * unit).sum((0, 1, 2)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        # written in the per-head layout (B, H, T, d): left in the merged one, every matmul the
        # gradient reaches in the memory's backward would copy it first.  Contiguous, not
        # empty_like(y): dynamo refuses a strided out=, and y can be strided (channel-wise decays)
        scaled = torch.mul(g, weight.to(g.dtype), out=torch.empty(y.shape, dtype=g.dtype, device=g.device))
        # d(y rstd) = rstd (g - unit mean(g unit)) for g the gradient of the unit vector
        grad_y = torch.addcmul(scaled, unit, (scaled * unit).mean(-1, keepdim=True), value=-1).mul_(rstd)
        return grad_y, grad_weight, None


def rms_merge_heads(y: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y (B, H, T, d), weight (d) -> RMSNorm(y) * weight as (B, T, H d)."""
    return _NormMerge.apply(y, weight, eps)


def merge_heads(y: torch.Tensor, norm: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, T, d) read-outs -> (B, T, H d) in ``dtype``, each head through ``norm`` (an
    ``nn.RMSNorm`` over d, fused here, or ``nn.Identity``): every memory layer merges its heads so."""
    y = y.to(dtype)
    if isinstance(norm, torch.nn.RMSNorm):
        return rms_merge_heads(y, norm.weight, norm.eps)
    return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
