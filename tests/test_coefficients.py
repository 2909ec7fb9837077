"""A chunk's coefficients under bf16 autocast stay fp32, like the gates they come from;
its decay matrix holds no subnormal numbers.

Reference: the same coefficients in float64 without autocast.  Tolerance: relative error
1e-5 (fp32 products of 64 x 64 decay matrices are near 1e-7; bf16 ones near 2e-3).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from miraslab.memory.kernels.decay_matrix import decay_matrix
from miraslab.memory.paths.coefficients import chunk_coefficients


def rates(seed: int = 0, channels: bool = False):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 4, 64, 8) if channels else (2, 4, 64)
    log_alpha = F.logsigmoid(torch.randn(shape, generator=g) + 3)
    log_eta = F.logsigmoid(torch.randn(shape, generator=g) + 2)
    theta = 0.1 * torch.rand(2, 4, 64, generator=g)
    return log_alpha, log_eta, theta


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("channels", [False, True], ids=["per-head", "channelwise"])
@pytest.mark.parametrize("band", [False, True], ids=["no-window", "omega-band"])
def test_coefficients_stay_fp32_under_bf16_autocast(channels, band):
    log_alpha, log_eta, theta = rates(channels=channels)
    gamma = torch.tril(torch.ones(64, 64)).triu(-3) * 0.5 if band else None  # a window of 4
    want = chunk_coefficients(
        log_alpha.double(), log_eta.double(), theta.double(), gamma.double() if band else None
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunk_coefficients(log_alpha, log_eta, theta, gamma)
    for name in ("coef", "momentum_coef", "carry", "beta"):
        value = getattr(got, name)
        assert value.dtype == torch.float32, name
        assert relative_error(value, getattr(want, name)) < 1e-5, name


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-grad", "autograd"])
def test_decay_matrix_of_a_strong_decay_has_no_subnormals(requires_grad):
    """exp(A_i - A_s) when alpha ~ 0.05 per token: most entries underflow fp32.

    They come out as at most 3.2e-38 (e x the smallest normal), never subnormal: subnormals
    take slow paths in exp and in every later product.  Reference: float64 from the same
    fp32 cumulative sums; tolerance 4e-38 absolute for true decays below 4e-38, 1e-5
    relative above; exact zeros above the diagonal.
    """
    g = torch.Generator().manual_seed(3)
    cum = torch.cumsum(F.logsigmoid(torch.randn(2, 4, 64, generator=g) - 3), dim=-1)
    want = (cum.double().unsqueeze(-1) - cum.double().unsqueeze(-2)).exp().tril()
    got = decay_matrix(cum.requires_grad_(requires_grad))
    tiny = torch.finfo(torch.float32).tiny
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert not ((got != 0) & (got.abs() < tiny)).any(), "subnormal decays"
    assert (got.triu(1) == 0).all()
    error = (got.double() - want).abs()
    normal = want > 4e-38  # above the floor exp(1 + log(tiny)) = 3.2e-38
    assert error[~normal].max().item() < 4e-38
    # fp32 exponent differences up to 87 carry ~6e-8 relative rounding: 5e-6 in exp
    assert (error / want.clamp_min(tiny))[normal].max().item() < 1e-5
    if requires_grad:
        got.sum().backward()
        assert torch.isfinite(cum.grad).all()


def test_decay_matrix_gradient_matches_autograd_through_the_plain_formula():
    """The hand-written backward against autograd through exp(A_i - A_s) masked to s <= i
    (float64, 1e-12), per head and per channel (B, H, C, L); and gradcheck."""
    g = torch.Generator().manual_seed(4)
    for shape in ((2, 3, 16), (2, 3, 4, 16)):
        cum = torch.cumsum(-0.2 * torch.rand(*shape, generator=g, dtype=torch.float64), -1)
        upstream = torch.randn(*shape, shape[-1], generator=g, dtype=torch.float64)
        ours, plain = cum.clone().requires_grad_(), cum.clone().requires_grad_()
        (decay_matrix(ours) * upstream).sum().backward()
        upper = torch.ones(shape[-1], shape[-1], dtype=torch.bool).triu(1)
        want = (plain.unsqueeze(-1) - plain.unsqueeze(-2)).masked_fill(upper, float("-inf")).exp()
        (want * upstream).sum().backward()
        torch.testing.assert_close(ours.grad, plain.grad, rtol=1e-12, atol=1e-12)
    small = torch.cumsum(-0.5 * torch.rand(2, 6, generator=g, dtype=torch.float64), -1)
    assert torch.autograd.gradcheck(decay_matrix, (small.requires_grad_(),))
