"""How a check of the kit fails: one AssertionError naming the check, the component and the numbers."""

from __future__ import annotations

import torch


class KitFailure(AssertionError):
    """A component broke a contract of the engine; the message says which, where and by how much."""


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| over max(1, max |expected|): float64 paths differ only in summation order."""
    if not got.numel():
        return 0.0
    got, expected = got.detach(), expected.detach()
    return float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))


def expect_close(what: str, got: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    if got.shape != expected.shape:
        raise KitFailure(f"{what}: shapes differ, {tuple(got.shape)} vs {tuple(expected.shape)}")
    if not (bool(torch.isfinite(got).all()) and bool(torch.isfinite(expected).all())):
        raise KitFailure(f"{what}: non-finite values (the rule diverges or divides by zero here)")
    error = relative_error(got, expected)
    if not error <= tolerance:  # also catches NaN
        raise KitFailure(f"{what}: differ by {error:.3g} of their scale (tolerance {tolerance:g})")
