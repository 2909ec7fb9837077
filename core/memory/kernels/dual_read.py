"""One linear map of a memory read in the dual form, as one autograd Function.

For every token i of a chunk, W_i x_i with W_i = beta_i W + sigma_i S + sum_j K[i, j] delta_j h_j^T:

    y = (K o x h^T) delta + (beta x) W^T + (sigma x) S^T

The chunked path of a deep memory makes two of these per chunk, sequentially; through
autograd each is eight graph nodes and their temporaries, by hand one node whose backward
reuses its buffers in place.  Tested against autograd (float64) and by gradcheck.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .batched import column_product, matmul_add, matmul_add_, times_transposed


class _DualRead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h, delta, coef, beta, sigma, w, s):
        y, saved = dual_read_forward(x, h, delta, coef, beta, sigma, w, s)
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        return dual_read_backward(ctx.saved_tensors, grad_y)


def dual_read_forward(x, h, delta, coef, beta, sigma, w, s) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The read and what its backward needs (``dual_read_backward``'s ``saved``)."""
    xh = x @ h.transpose(-1, -2)
    attend = coef * xh
    y = attend @ delta
    y = matmul_add(y, beta * x, w.transpose(-1, -2))
    if sigma is not None:
        y = matmul_add(y, sigma * x, s.transpose(-1, -2))
    return y, [x, h, delta, coef, beta, sigma, w, s, xh, attend]


def dual_read_backward(
    saved: tuple[torch.Tensor, ...],
    grad_y: torch.Tensor,
    into_w: torch.Tensor | None = None,
    into_s: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of x, h, delta, coef, beta, sigma, W, S.  ``into_w`` / ``into_s``: gradients of
    W and S from elsewhere, W's and S's added to them in place (``read_and_end``)."""
    x, h, delta, coef, beta, sigma, w, s, xh, attend = saved
    grad_delta = attend.transpose(-1, -2) @ grad_y
    grad_attend = grad_y @ delta.transpose(-1, -2)
    grad_coef = grad_attend * xh
    grad_xh = grad_attend.mul_(coef)
    grad_h = grad_xh.transpose(-1, -2) @ x
    grad_x = grad_xh @ h
    # (beta x) W^T: gradients of beta, x and W
    through_w = grad_y @ w
    grad_beta = (through_w * x).sum(-1, keepdim=True)
    grad_x.addcmul_(through_w, beta)
    grad_w = _outer(into_w, grad_y, beta * x)
    grad_sigma = grad_s = None
    if sigma is not None:
        through_s = grad_y @ s
        grad_sigma = (through_s * x).sum(-1, keepdim=True)
        grad_x.addcmul_(through_s, sigma)
        grad_s = _outer(into_s, grad_y, sigma * x)
    return grad_x, grad_h, grad_delta, grad_coef, grad_beta, grad_sigma, grad_w, grad_s


def _outer(into: torch.Tensor | None, grad_y: torch.Tensor, scaled_x: torch.Tensor) -> torch.Tensor:
    """grad_y^T scaled_x, added to ``into`` in place when given (one pass and no add after)."""
    if into is None:
        return grad_y.transpose(-1, -2) @ scaled_x
    return matmul_add_(into, grad_y.transpose(-1, -2), scaled_x)


def dual_read(
    x: torch.Tensor,
    h: torch.Tensor,
    delta: torch.Tensor,
    coef: torch.Tensor,
    beta: torch.Tensor,
    sigma: torch.Tensor | None,
    w: torch.Tensor,
    s: torch.Tensor | None,
) -> torch.Tensor:
    """x, h (B, H, L, d_in), delta (B, H, L, d_out), coef (B, H, L, L), beta / sigma (B, H, L, 1),
    w / s (B, H, d_out, d_in), all one dtype -> W_i x_i for every token (B, H, L, d_out).

    A coefficient matrix per value channel (channel-wise decays), coef with one dimension
    more than x, is read through autograd (``_channel_dual_read``)."""
    if coef.dim() > x.dim():
        return _channel_dual_read(x, h, delta, coef, beta, sigma, w, s)
    return _DualRead.apply(x, h, delta, coef, beta, sigma, w, s)


def _channel_dual_read(x, h, delta, coef, beta, sigma, w, s) -> torch.Tensor:
    """``dual_read`` with one coefficient matrix per value channel (channel-wise decays):
    coef (B, H, C, L, L), beta / sigma (B, H, L, C), C = d_out or 1.  Row c of W_i is
    beta_ic W[c] + sigma_ic S[c] + sum_j K_c[i, j] delta_jc h_j^T, so

        y_ic = sum_j K_c[i, j] (x_i . h_j) delta_jc + beta_ic (W x_i)_c + sigma_ic (S x_i)_c

    Through autograd: a (B, H, d_out, L, L) product per chunk, for the feature, not for speed."""
    attend = coef * (x @ h.transpose(-1, -2)).unsqueeze(-3)
    y = column_product(attend, delta.transpose(-1, -2).unsqueeze(-1)).squeeze(-1).transpose(-1, -2)
    y = y + beta * times_transposed(x, w)
    if sigma is not None:
        y = y + sigma * times_transposed(x, s)
    return y
