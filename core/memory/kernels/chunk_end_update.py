"""The chunk-end state of one linear map of a memory, as one autograd Function.

    W' = beta_L W + sigma_L S + sum_j a_j delta_j h_j^T
    S' = eta_L S + sum_j b_j delta_j h_j^T

with a, b the last rows of the chunk's coefficient matrices (K and the momentum's).  The
chunked path of a deep memory makes one per linear map and chunk, sequentially; through
autograd each is a dozen small graph nodes, by hand one.  Tested against autograd (float64)
and by gradcheck.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .batched import matmul_add_, outer_sum, outer_sum_rows


class _ChunkEnd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta, h, row_w, row_s, beta, sigma, eta, w, s):
        new_w, new_s, saved = chunk_end_forward(delta, h, row_w, row_s, beta, sigma, eta, w, s)
        ctx.save_for_backward(*saved)
        # an unused state (the last chunk's) costs no zero-filled gradient; not under dynamo,
        # whose traced backward calls .contiguous() on every gradient (torch 2.13)
        ctx.set_materialize_grads(torch.compiler.is_compiling())
        return new_w, new_s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_w, grad_s):
        return chunk_end_backward(ctx.saved_tensors, grad_w, grad_s)


def chunk_end_forward(
    delta, h, row_w, row_s, beta, sigma, eta, w, s
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor | None]]:
    """W', S' and what their backward needs (``chunk_end_backward``'s ``saved``)."""
    new_w = _decayed_plus_outer(w, beta, s, sigma, row_w, delta, h)
    new_s = _decayed_plus_outer(s, eta, None, None, row_s, delta, h) if s is not None else None
    return new_w, new_s, [delta, h, row_w, row_s, beta, sigma, eta, w, s]


def chunk_end_backward(
    saved: tuple[torch.Tensor | None, ...], grad_w: torch.Tensor | None, grad_s: torch.Tensor | None
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of delta, h, row_w, row_s, beta, sigma, eta, W, S (None for an unused output's)."""
    delta, h, row_w, row_s, beta, sigma, eta, w, s = saved
    momentum = s is not None
    if grad_w is None and grad_s is None:  # the last chunk's state, unused
        return (None,) * 9
    if grad_w is None:
        grad_w = torch.zeros_like(w)
    grad_beta, grad_prev_w = _dot(grad_w, w), grad_w * beta
    grad_sigma = grad_eta = grad_prev_s = None
    if momentum:
        grad_sigma, grad_prev_s = _dot(grad_w, s), grad_w * sigma
        if grad_s is not None:
            grad_eta = _dot(grad_s, s)
            grad_prev_s.addcmul_(grad_s, eta)
        else:
            grad_eta = torch.zeros_like(eta)

    def through_sum(g: torch.Tensor, row: torch.Tensor):
        """Gradients of sum_j row_j delta_j h_j^T given its gradient g."""
        g = g.to(delta.dtype)
        g_h = h @ g.transpose(-1, -2)  # g h_j, (L x d_out)
        g_delta = delta @ g  # g^T delta_j, (L x d_in)
        grad_row = (g_h * delta).sum(-1)
        return g_h * row.unsqueeze(-1), g_delta * row.unsqueeze(-1), grad_row

    grad_delta, grad_h, grad_row_w = through_sum(grad_w, row_w)
    grad_row_s = None
    if momentum and grad_s is not None:
        more_delta, more_h, grad_row_s = through_sum(grad_s, row_s)
        grad_delta, grad_h = grad_delta.add_(more_delta), grad_h.add_(more_h)
    elif momentum:
        grad_row_s = torch.zeros_like(row_s)
    return (
        grad_delta,
        grad_h,
        grad_row_w,
        grad_row_s,
        grad_beta,
        grad_sigma,
        grad_eta,
        grad_prev_w,
        grad_prev_s,
    )


def _decayed_plus_outer(
    x: torch.Tensor,
    scale: torch.Tensor,
    other: torch.Tensor | None,
    other_scale: torch.Tensor | None,
    row: torch.Tensor,
    delta: torch.Tensor,
    h: torch.Tensor,
) -> torch.Tensor:
    """scale x (+ other_scale other) + sum_j row_j delta_j h_j^T, the sum added in place by the
    matmul (one pass over the state fewer than a separate product and add)."""
    out = x * scale
    if other is not None:
        out.addcmul_(other, other_scale)
    if delta.dtype != out.dtype:  # the sum in the factors' dtype, as autograd would
        return out.add_(outer_sum(row, delta, h).to(out.dtype))
    if delta.shape[-1] <= h.shape[-1]:  # the row scales the narrower factor
        return matmul_add_(out, (delta * row.unsqueeze(-1)).transpose(-1, -2), h)
    return matmul_add_(out, delta.transpose(-1, -2), h * row.unsqueeze(-1))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> per leading index: (..., m, n) twice -> (..., 1, 1).  A product and a sum: a
    (1 x mn) @ (mn x 1) bmm took 4.5 times as long (CPU, (64, 1, 4096))."""
    return torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))[..., None, None]


def chunk_end_update(
    delta: torch.Tensor,
    h: torch.Tensor,
    row_w: torch.Tensor,
    row_s: torch.Tensor | None,
    beta: torch.Tensor,
    sigma: torch.Tensor | None,
    eta: torch.Tensor | None,
    w: torch.Tensor,
    s: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """delta (B, H, L, d_out), h (B, H, L, d_in), rows (B, H, L) in their dtype; beta, sigma,
    eta (B, H, 1, 1), w, s (B, H, d_out, d_in) in the state's dtype -> (W', S' or None).

    Rows per value channel (channel-wise decays), as many dimensions as delta, go through
    autograd (``_channel_chunk_end``)."""
    if row_w.dim() == delta.dim():
        return _channel_chunk_end(delta, h, row_w, row_s, beta, sigma, eta, w, s)
    return _ChunkEnd.apply(delta, h, row_w, row_s, beta, sigma, eta, w, s)


def _channel_chunk_end(
    delta, h, row_w, row_s, beta, sigma, eta, w, s
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``chunk_end_update`` with channel-wise decays: rows (B, H, C, L) and beta, sigma, eta
    (B, H, C, 1), one per row of W (C = d_out or 1); through autograd."""
    state_dtype = w.dtype
    new_w = outer_sum_rows(row_w, delta, h).to(state_dtype) + beta * w
    if s is None:
        return new_w, None
    new_w = new_w + sigma * s
    return new_w, outer_sum_rows(row_s, delta, h).to(state_dtype) + eta * s
