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

from .batched import outer_sum, outer_sum_rows


class _ChunkEnd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta, h, row_w, row_s, beta, sigma, eta, w, s):
        state_dtype = w.dtype
        new_w = torch.addcmul(outer_sum(row_w, delta, h).to(state_dtype), beta, w)
        new_s = None
        if s is not None:
            new_w.addcmul_(sigma, s)
            new_s = torch.addcmul(outer_sum(row_s, delta, h).to(state_dtype), eta, s)
        ctx.save_for_backward(delta, h, row_w, row_s, beta, sigma, eta, w, s)
        return new_w, new_s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_w, grad_s):
        delta, h, row_w, row_s, beta, sigma, eta, w, s = ctx.saved_tensors
        momentum = s is not None
        if grad_w is None:
            grad_w = torch.zeros_like(w)
        if momentum and grad_s is None:
            grad_s = torch.zeros_like(s)

        def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # <a, b> per (batch, head)
            return (a * b).sum((-1, -2), keepdim=True)

        grad_beta, grad_prev_w = dot(grad_w, w), beta * grad_w
        grad_sigma = grad_eta = grad_prev_s = None
        if momentum:
            grad_sigma, grad_eta = dot(grad_w, s), dot(grad_s, s)
            grad_prev_s = torch.addcmul(sigma * grad_w, eta, grad_s)

        def through_sum(g: torch.Tensor, row: torch.Tensor):
            """Gradients of sum_j row_j delta_j h_j^T given its gradient g."""
            g = g.to(delta.dtype)
            g_h = h @ g.transpose(-1, -2)  # g h_j, (L x d_out)
            g_delta = delta @ g  # g^T delta_j, (L x d_in)
            grad_row = (g_h * delta).sum(-1)
            return g_h * row.unsqueeze(-1), g_delta * row.unsqueeze(-1), grad_row

        grad_delta, grad_h, grad_row_w = through_sum(grad_w, row_w)
        grad_row_s = None
        if momentum:
            more_delta, more_h, grad_row_s = through_sum(grad_s, row_s)
            grad_delta, grad_h = grad_delta.add_(more_delta), grad_h.add_(more_h)
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
