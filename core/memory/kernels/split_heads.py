"""(B, T, 3 H d) -> q, k, v (B, H, T, d), contiguous, with l2-normalised q and k.

One autograd Function: the normalisation writes straight into the per-head layout the
engine's batched matmuls need, and the backward writes the three gradients into one
(B, T, 3 H d) buffer.  Through autograd the same steps cost a split, two normalisations
(norm, clamp, divide and their backward), three layout copies and a concatenation.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

EPS = 1e-12  # F.normalize's default


class _SplitHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, heads: int, normalize: bool):
        batch, length, width = qkv.shape
        per_head = qkv.view(batch, length, 3, heads, width // (3 * heads)).permute(
            2, 0, 3, 1, 4
        )  # (3, B, H, T, d)
        norms = None
        if normalize:
            # q and k in a buffer of their own, v copied apart: with all three written into
            # slices of one buffer, inductor (torch 2.13, CPU) got the gradients before the
            # memory wrong under a whole-model compile (tests/test_memory_layer.py,
            # channel-wise momentum)
            norms = torch.linalg.vector_norm(per_head[:2], dim=-1, keepdim=True).clamp_min_(EPS)
            qk = torch.empty_like(per_head[:2], memory_format=torch.contiguous_format)
            torch.div(per_head[:2], norms, out=qk)
            q, k, v = qk[0], qk[1], per_head[2].contiguous()
        else:
            q, k, v = per_head.contiguous().unbind(0)
        ctx.normalize, ctx.shape = normalize, qkv.shape
        ctx.save_for_backward(qk if normalize else None, norms)
        return q, k, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q, grad_k, grad_v):
        unit, norms = ctx.saved_tensors
        batch, length, width = ctx.shape
        grads = [grad_q, grad_k, grad_v]
        like = next(g for g in grads if g is not None)
        heads, d = like.shape[1], like.shape[-1]
        grad = like.new_zeros(batch, length, 3, heads, d)
        per_head = grad.permute(2, 0, 3, 1, 4)  # a view: writing it fills the (B, T, 3 H d) gradient
        for index, g in enumerate(grads):
            if g is None:
                continue
            if ctx.normalize and index < 2:
                # d(x / |x|) = (g - y (y . g)) / |x|
                y = unit[index]
                g = torch.addcmul(g, y, -(g * y).sum(-1, keepdim=True)).div_(norms[index])
            per_head[index].copy_(g)
        return grad.view(batch, length, width), None, None


def split_heads(qkv: torch.Tensor, heads: int, normalize_qk: bool = True):
    """qkv (B, T, 3 H d) -> q, k, v (B, H, T, d), contiguous; q and k l2-normalised if asked."""
    return _SplitHeads.apply(qkv, heads, normalize_qk)
