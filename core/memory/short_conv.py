"""The short causal depthwise convolution of a memory branch, fused with its SiLU.

y_t = act(b + sum_j w_j * x_{t - (K-1) + j}) per channel, with the last K-1 inputs of the
previous call (or zeros) in front.  The backward is written by hand: autograd through the
shifted-sum form multiplies every gradient by addcmul's scalar, zero-fills a full-size
gradient per tap and adds them up (about 7 ms of a 70 ms memory layer at seq 1024 here),
and PyTorch's depthwise conv1d backward is slow on CPU.  Tensors are (batch, time,
channels) with channels contiguous, as the projection leaves them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, past, weight, bias, silu: bool):
        kernel, length = weight.shape[1], x.shape[1]
        padded = torch.cat([past.transpose(1, 2).to(x.dtype), x], dim=1)  # (B, K - 1 + T, C)
        w = weight.to(x.dtype)
        y = torch.addcmul(bias.to(x.dtype), padded[:, :length], w[:, 0])
        for j in range(1, kernel):
            y.addcmul_(padded[:, j : j + length], w[:, j])
        ctx.silu = silu
        ctx.save_for_backward(padded, weight, y)
        return (F.silu(y) if silu else y), padded[:, length:].transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_carry):
        padded, weight, y = ctx.saved_tensors
        kernel, length = weight.shape[1], y.shape[1]
        if grad_out is None:
            grad_out = torch.zeros_like(y)
        g = torch.ops.aten.silu_backward(grad_out, y) if ctx.silu else grad_out
        w = weight.to(g.dtype)
        grad_padded = torch.zeros_like(padded)
        if grad_carry is not None:
            grad_padded[:, length:] = grad_carry.transpose(1, 2)
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[2] else None
        for j in range(kernel):
            grad_padded[:, j : j + length].addcmul_(g, w[:, j])
            if grad_weight is not None:
                grad_weight[:, j] = (g * padded[:, j : j + length]).sum((0, 1), dtype=weight.dtype)
        grad_bias = g.sum((0, 1), dtype=weight.dtype) if ctx.needs_input_grad[3] else None
        grad_past = grad_padded[:, : kernel - 1].transpose(1, 2) if ctx.needs_input_grad[1] else None
        return grad_padded[:, kernel - 1 :], grad_past, grad_weight, grad_bias, None


def causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    past: torch.Tensor | None = None,
    silu: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, C), weight (C, K), bias (C), past (B, C, K-1) or None (zeros).

    Returns act(conv(x)) (B, T, C) and the last K-1 inputs (B, C, K-1) to carry over.
    Differentiable once (a double backward through it raises).
    """
    if past is None:
        past = x.new_zeros(x.shape[0], x.shape[2], weight.shape[1] - 1)
    return _CausalConv.apply(x, past, weight, bias, silu)
