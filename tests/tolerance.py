"""Tolerances for float32 equivalence tests, stated against each tensor's scale.

Two float32 computations of the same thing (compiled and eager, a cache and one call, the
chunked and recurrent paths) differ by rounding, and how much depends on the CPU's vector
width and on the kernels inductor picks: an element-wise ``atol = rtol = 1e-5`` passes on
one machine and fails on the next wherever a small element sits beside large ones.  The
rounding of a sum scales with its largest terms, so the error is measured against the
tensor's largest magnitude: ``max|got - expected| <= tol * max|expected|``.  A
miscompilation or a wrong formula is off by a sizeable fraction of the scale, not by a few
ulps of it.
"""

from __future__ import annotations

import torch

FP32_EPS = torch.finfo(torch.float32).eps  # 1.2e-7


def scaled_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|got - expected| / max|expected|``, in float64 (0 when both are all zero)."""
    got, expected = got.detach().double(), expected.detach().double()
    assert got.shape == expected.shape, f"shapes {tuple(got.shape)} and {tuple(expected.shape)}"
    error = (got - expected).abs().max().item() if got.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    if scale == 0.0:
        return error if error == 0.0 else float("inf")
    return error / scale


def assert_close_to_scale(got: torch.Tensor, expected: torch.Tensor, tol: float, name: str = "") -> None:
    """Fail unless ``max|got - expected| <= tol * max|expected|``; non-finite values fail."""
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    error = scaled_error(got, expected)
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    assert error <= tol, (
        f"{name}: max|got - expected| is {error:.2e} of the scale {scale:.3g}, above {tol:.0e}"
    )
