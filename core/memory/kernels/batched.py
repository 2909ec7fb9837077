"""Matmuls over any leading (batch) dimensions."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


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


def matmul_add_(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``matmul_add`` in place when ``base`` is contiguous (a tensor its caller made); returns it."""
    if not base.is_contiguous():
        return matmul_add(base, a, b, alpha)
    lead = base.shape[:-2]
    a3 = a.expand(*lead, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*lead, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    base.view(-1, *base.shape[-2:]).baddbmm_(a3, b3, alpha=alpha)
    return base


def outer_sum(coef: torch.Tensor, delta: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """sum_j coef_j * delta_j h_j^T: (B, H, N) x (B, H, N, o) x (B, H, N, i) -> (B, H, o, i).

    The coefficients scale the narrower factor: the same product, fewer elementwise ops.
    """
    if delta.shape[-1] <= h.shape[-1]:
        return (delta * coef.unsqueeze(-1).to(delta.dtype)).transpose(-1, -2) @ h
    return delta.transpose(-1, -2) @ (h * coef.unsqueeze(-1).to(h.dtype))


def outer_sum_rows(rows: torch.Tensor, delta: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """sum_j rows[c, j] delta_jc h_j^T per output row c: rows (B, H, C, N) with C = o or 1,
    delta (B, H, N, o), h (B, H, N, i) -> (B, H, o, i)."""
    return (delta * rows.transpose(-1, -2).to(delta.dtype)).transpose(-1, -2) @ h


class _ColumnProduct(torch.autograd.Function):
    """a @ b for a one-column b: autograd's backward makes dL/da = g b^T with a matmul of inner
    size 1 (431 us for (2048, 16, 16) here), a broadcast product makes it in 11 us.  The forward
    stays a matmul: the sum-of-products form's backward is miscompiled by inductor (torch 2.13,
    CPU; aot_eager exact), which test_memory_layer's channel-wise compile case catches."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad.contiguous()  # the product takes its layout from it; a strided one slowed the rest
        grad_a = grad * b.transpose(-1, -2) if ctx.needs_input_grad[0] else None
        grad_b = a.transpose(-1, -2) @ grad if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def column_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, b (..., k, 1): a matrix times one column per leading index."""
    return _ColumnProduct.apply(a, b)


class _TimesTransposed(torch.autograd.Function):
    """x @ w^T with w's gradient made as grad^T @ x, in w's own (contiguous) layout.

    Through autograd it comes out as the transpose of x^T @ grad: a strided view that every
    later use reads across rows.  In the channel-wise chunk step inductor (torch 2.13, CPU)
    tiles the kernel that sums over it in 2-D and then reuses a per-row local buffer across
    16 rows at once, which made the decay gate's gradient wrong (tests/test_chunk_compile.py's
    channel-wise case catches it)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.transpose(-1, -2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = grad @ w if ctx.needs_input_grad[0] else None
        grad_w = grad.transpose(-1, -2) @ x if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


def times_transposed(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w^T: x (..., n, i), w (..., o, i) with leading dimensions that broadcast to x's
    (autograd sums w's gradient back to its shape) -> (..., n, o)."""
    return _TimesTransposed.apply(x, w)
