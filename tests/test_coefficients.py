"""A chunk's coefficients under bf16 autocast stay fp32, like the gates they come from.

Reference: the same coefficients in float64 without autocast.  Tolerance: relative error
1e-5 (fp32 products of 64 x 64 decay matrices are near 1e-7; bf16 ones near 2e-3).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from miraslab.memory.coefficients import chunk_coefficients


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
