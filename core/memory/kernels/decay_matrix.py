"""The decay matrix of a chunk, exp(A_i - A_s) for s <= i, as one autograd Function.

Reference: ``torch.exp(A.unsqueeze(-1) - A.unsqueeze(-2)).tril()``; this kernel clamps the
exponent (no subnormals, no exp of -inf) and writes its backward by hand.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable


def decay_matrix(log_alpha_cumsum: torch.Tensor) -> torch.Tensor:
    """exp(A_i - A_s) for s <= i, else 0; (B, H, L) -> (B, H, L, L). Stable: A is non-increasing.

    The exponent is clamped to [1 + log(smallest normal), 0] before exp, and the upper
    triangle zeroed after: exp of -inf, of an overflowing exponent or with a subnormal result
    takes a slow path on CPU (436, 1134 and 5174 us against 164 us for a (2, 4, 16, 64, 64)
    exp here), and subnormals slow every later product.  A decay below e times the smallest
    normal (3.2e-38 in fp32) comes out as that value instead.  Differentiable once, by hand:
    dD_is/dA_i = D_is = -dD_is/dA_s (autograd through the clamp, exp and mask spent 10 ms of
    a channel-wise layer's backward on masks); a clamped decay's gradient comes out as its
    value, 3.2e-38, in place of the true one below it.
    """
    if torch.is_grad_enabled() and log_alpha_cumsum.requires_grad:
        return _DecayMatrix.apply(log_alpha_cumsum)
    return _decay_matrix(log_alpha_cumsum)


def _decay_matrix(log_alpha_cumsum: torch.Tensor) -> torch.Tensor:
    length, dtype = log_alpha_cumsum.shape[-1], log_alpha_cumsum.dtype
    # fp32's floor at least: fp16's smallest normal (6e-5) would clamp decays that matter
    floor = 1.0 + math.log(torch.finfo(torch.promote_types(dtype, torch.float32)).tiny)
    lower = torch.ones(length, length, dtype=dtype, device=log_alpha_cumsum.device).tril_()
    diff = log_alpha_cumsum.unsqueeze(-1) - log_alpha_cumsum.unsqueeze(-2)
    return diff.clamp_(min=floor, max=0.0).exp_().mul_(lower)  # in place: one (L x L) allocation


class _DecayMatrix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_alpha_cumsum):
        decay = _decay_matrix(log_alpha_cumsum)
        ctx.save_for_backward(decay)
        return decay

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (decay,) = ctx.saved_tensors
        h = grad * decay  # zero above the diagonal, where the decay is
        return h.sum(-1) - h.sum(-2)
