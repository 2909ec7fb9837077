"""rms_merge_heads against nn.RMSNorm + transpose + reshape (float64: values 1e-12, gradients 1e-10)."""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_close_to_scale

from miraslab.memory.kernels.merge_heads import rms_merge_heads


def test_matches_rmsnorm_then_merge_and_gradchecks():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    norm = torch.nn.RMSNorm(4, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
    ours = rms_merge_heads(y, norm.weight, 1e-6)
    reference = norm(y).transpose(1, 2).reshape(2, 5, 12)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    cotangent = torch.randn(2, 5, 12, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((ours * cotangent).sum(), (y, norm.weight))
    want = torch.autograd.grad((reference * cotangent).sum(), (y, norm.weight))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda y, w: rms_merge_heads(y, w, 1e-6), (y, norm.weight))


def test_input_gradient_is_laid_out_like_the_input():
    """In the merged (B, T, H, d) layout every matmul of the memory's backward would copy it first."""
    y = torch.randn(2, 3, 5, 4, requires_grad=True) * 1.0  # not a leaf: no layout fix on accumulation
    out = rms_merge_heads(y, torch.ones(4), 1e-6)
    (grad,) = torch.autograd.grad(out, y, torch.randn_like(out))
    assert grad.is_contiguous()


@pytest.mark.compile
def test_a_strided_input_compiles_without_graph_breaks_and_matches_eager():
    """The channel-wise path hands the merge a strided y; dynamo refuses a strided out= in the
    backward.  The gradient is taken against a random cotangent: the gradient of
    ``out.square().sum()`` through an RMS norm is zero but for the eps, all rounding, and
    can be compared to nothing.  Tolerance: 1e-5 of each tensor's largest magnitude (fp32,
    sums in another order)."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(2, 3, 4, 5, generator=generator, requires_grad=True)
    cotangent = torch.randn(2, 5, 12, generator=generator)

    def merged(base: torch.Tensor) -> torch.Tensor:
        y = base.transpose(-1, -2) * 1.0  # (2, 3, 5, 4) with the strides of a transpose
        return rms_merge_heads(y, torch.ones(4), 1e-6)

    eager = merged(base)
    (grad_eager,) = torch.autograd.grad((eager * cotangent).sum(), base)
    compiled = torch.compile(merged, fullgraph=True)(base)
    (grad_compiled,) = torch.autograd.grad((compiled * cotangent).sum(), base)
    assert_close_to_scale(compiled, eager, 1e-5, "output")
    assert_close_to_scale(grad_compiled, grad_eager, 1e-5, "gradient")
