"""The dual-form read of one linear map and its chunk-end state, as one autograd Function.

Both take the chunk-start W and S (``dual_read``, ``chunk_end_update``), so through two
Functions autograd gets two full-size gradients of each and adds them: the read's
g_y^T (beta x) and the chunk end's beta_L g_W' (and likewise for S).  Here the read's part is
added by its matmul straight into the chunk end's (``baddbmm_``): per map and chunk two
state-size tensors and two state-size additions fewer.  Tested against the two Functions
and by gradcheck (tests/test_read_and_end.py).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .chunk_end_update import chunk_end_backward, chunk_end_forward
from .dual_read import dual_read_backward, dual_read_forward


class _ReadAndEnd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h, delta, coef, beta, sigma, w, s, row_w, row_s, beta_end, sigma_end, eta_end):
        y, read_saved = dual_read_forward(x, h, delta, coef, beta, sigma, w, s)
        new_w, new_s, end_saved = chunk_end_forward(
            delta, h, row_w, row_s, beta_end, sigma_end, eta_end, w, s
        )
        ctx.save_for_backward(*read_saved, *end_saved)
        ctx.split = len(read_saved)
        # an unused state (the last chunk's) costs no zero-filled gradient; not under dynamo,
        # whose traced backward calls .contiguous() on every gradient (torch 2.13)
        ctx.set_materialize_grads(torch.compiler.is_compiling())
        return y, new_w, new_s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_w, grad_s):
        saved = ctx.saved_tensors
        read_saved, end_saved = saved[: ctx.split], saved[ctx.split :]
        if grad_y is None:
            x, delta = read_saved[0], read_saved[2]
            grad_y = x.new_zeros(*x.shape[:-1], delta.shape[-1])
        (
            end_delta,
            end_h,
            grad_row_w,
            grad_row_s,
            grad_beta_end,
            grad_sigma_end,
            grad_eta_end,
            into_w,
            into_s,
        ) = chunk_end_backward(end_saved, grad_w, grad_s)
        grad_x, grad_h, grad_delta, grad_coef, grad_beta, grad_sigma, grad_prev_w, grad_prev_s = (
            dual_read_backward(read_saved, grad_y, into_w, into_s)
        )
        if end_h is not None:
            grad_h, grad_delta = grad_h + end_h, grad_delta + end_delta
        return (
            grad_x,
            grad_h,
            grad_delta,
            grad_coef,
            grad_beta,
            grad_sigma,
            grad_prev_w,
            grad_prev_s,
            grad_row_w,
            grad_row_s,
            grad_beta_end,
            grad_sigma_end,
            grad_eta_end,
        )


def read_and_end(
    x: torch.Tensor,
    h: torch.Tensor,
    delta: torch.Tensor,
    coef: torch.Tensor,
    beta: torch.Tensor,
    sigma: torch.Tensor | None,
    w: torch.Tensor,
    s: torch.Tensor | None,
    row_w: torch.Tensor,
    row_s: torch.Tensor | None,
    beta_end: torch.Tensor,
    sigma_end: torch.Tensor | None,
    eta_end: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``dual_read(x, h, delta, coef, beta, sigma, w, s)`` and ``chunk_end_update(delta, h,
    row_w, row_s, beta_end, sigma_end, eta_end, w, s)`` at once: (y, W', S' or None).  Every
    tensor in one dtype; per head only (no channel-wise rows)."""
    return _ReadAndEnd.apply(x, h, delta, coef, beta, sigma, w, s, row_w, row_s, beta_end, sigma_end, eta_end)
