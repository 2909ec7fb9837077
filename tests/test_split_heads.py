"""split_heads against the autograd reference (chunk, view, transpose, F.normalize).

Float64; values to 1e-12, gradients to 1e-10.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from miraslab.memory.kernels.split_heads import split_heads


def reference(qkv, heads, normalize):
    batch, length, _ = qkv.shape
    q, k, v = (t.view(batch, length, heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    if normalize:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return q, k, v


@pytest.mark.parametrize("normalize", [True, False])
def test_values_gradients_and_layout(normalize):
    qkv = torch.randn(2, 5, 3 * 3 * 4, dtype=torch.float64, requires_grad=True)
    cotangents = [torch.randn(2, 3, 5, 4, dtype=torch.float64) for _ in range(3)]
    outs = split_heads(qkv, 3, normalize)
    refs = reference(qkv, 3, normalize)
    for out, ref in zip(outs, refs, strict=True):
        assert out.is_contiguous() and out.shape == (2, 3, 5, 4)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)

    def grad(tensors):
        loss = sum((t * c).sum() for t, c in zip(tensors, cotangents, strict=True))
        return torch.autograd.grad(loss, qkv)[0]

    torch.testing.assert_close(grad(outs), grad(refs), rtol=1e-10, atol=1e-12)


def test_gradcheck_and_unused_outputs():
    qkv = torch.randn(1, 3, 3 * 2 * 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: split_heads(x, 2), (qkv,))
    q, _, _ = split_heads(qkv, 2)  # only q used: the others get no gradient
    (grad,) = torch.autograd.grad(q.sum(), qkv)
    assert grad[..., 4:].abs().max() == 0 and grad[..., :4].abs().max() > 0


def test_a_zero_vector_stays_finite():
    qkv = torch.zeros(1, 2, 3 * 4, dtype=torch.float64, requires_grad=True)
    q, k, v = split_heads(qkv, 1)
    (q.sum() + k.sum() + v.sum()).backward()
    assert torch.isfinite(qkv.grad).all()
