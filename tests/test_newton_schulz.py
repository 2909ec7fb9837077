"""Muon's Newton-Schulz (one autograd Function with a hand-written backward) against the same
iterations through autograd: float64, values 1e-12 and gradients 1e-10, both orientations,
and gradcheck."""

from __future__ import annotations

import pytest
import torch

from miraslab.plugins.algorithm.muon import NS_COEFFICIENTS, newton_schulz


def reference(update: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
    a, b, c = NS_COEFFICIENTS
    x = update
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.transpose(-1, -2)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.transpose(-1, -2) if transposed else x


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (2, 3, 6, 4), (5, 5)], ids=["wide", "tall", "square"])
@pytest.mark.parametrize("steps", [1, 5])
def test_matches_autograd_and_gradchecks(shape, steps):
    g = torch.Generator().manual_seed(0)
    update = torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
    ours, want = newton_schulz(update, steps), reference(update, steps)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    cotangent = torch.randn(shape, generator=g, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad((ours * cotangent).sum(), update)
    (grad_want,) = torch.autograd.grad((want * cotangent).sum(), update)
    torch.testing.assert_close(grad_ours, grad_want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda u: newton_schulz(u, steps), (update,))


def test_zero_update_matches_autograd():
    """|x| = 0: autograd's norm takes the radial term as 0; so does the hand-written backward."""
    update = torch.zeros(2, 3, 4, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, 3, 4, dtype=torch.float64)
    (ours,) = torch.autograd.grad((newton_schulz(update, 5) * cotangent).sum(), update)
    (want,) = torch.autograd.grad((reference(update, 5) * cotangent).sum(), update)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, want, rtol=1e-10, atol=1e-12)


def test_under_bf16_autocast_matmuls_in_bf16_like_autograd():
    """Under autocast the forward's matmuls run in bf16 as they did through autograd: both sit
    about as far from the fp32 result (3e-2 here, bf16's rounding over five steps)."""
    g = torch.Generator().manual_seed(3)
    update = torch.randn(4, 8, 16, generator=g).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, want = newton_schulz(update, 5), reference(update, 5)
    exact = reference(update.detach(), 5)
    assert ours.dtype == torch.float32
    assert 1e-3 < (ours - exact).abs().max() < 1.5 * (want.float() - exact).abs().max()
    (grad,) = torch.autograd.grad(ours.sum(), update)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
