"""The fused causal depthwise convolution against torch's conv1d, and its hand-written backward.

Float64; forward to 1e-12, gradients to 1e-10 relative (summation order only).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from miraslab.memory.kernels.short_conv import causal_conv


def reference(x, weight, bias, past, silu):
    """conv1d over [past, x] in (B, C, T) layout: the oracle."""
    seq = torch.cat([past, x.transpose(1, 2)], dim=2)
    y = F.conv1d(seq, weight.unsqueeze(1), bias, groups=weight.shape[0]).transpose(1, 2)
    return (F.silu(y) if silu else y), seq[:, :, -(weight.shape[1] - 1) :]


def inputs(batch=2, length=7, channels=5, kernel=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def make(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return (
        make(batch, length, channels),
        make(channels, kernel),
        make(channels),
        make(batch, channels, kernel - 1),
    )


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("kernel", [2, 4])
def test_matches_conv1d(silu, kernel):
    x, weight, bias, past = inputs(kernel=kernel)
    out, carry = causal_conv(x, weight, bias, past, silu)
    ref_out, ref_carry = reference(x, weight, bias, past, silu)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(carry, ref_carry, rtol=0, atol=0)


def test_no_past_means_zeros():
    x, weight, bias, past = inputs()
    out, _ = causal_conv(x, weight, bias)
    want = reference(x, weight, bias, torch.zeros_like(past), True)[0]
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_two_calls_with_the_carry_equal_one():
    x, weight, bias, past = inputs(length=9)
    whole, whole_carry = causal_conv(x, weight, bias, past)
    first, carry = causal_conv(x[:, :4], weight, bias, past)
    second, last_carry = causal_conv(x[:, 4:], weight, bias, carry)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last_carry, whole_carry, rtol=0, atol=0)


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("length", [1, 3, 4, 9])  # shorter than the kernel (decoding) and not
def test_gradcheck(silu, length):
    """Every input, through both outputs (the carry's gradient included)."""
    x, weight, bias, past = (t.requires_grad_() for t in inputs(length=length, channels=3))
    assert torch.autograd.gradcheck(lambda *a: causal_conv(*a, silu=silu), (x, weight, bias, past))


def test_gradients_match_autograd_through_conv1d():
    x, weight, bias, past = (t.requires_grad_() for t in inputs(length=33, channels=6))
    grad_out = torch.randn(2, 33, 6, dtype=torch.float64)
    grad_carry = torch.randn(2, 6, 3, dtype=torch.float64)

    def grads(fn):
        out, carry = fn(x, weight, bias, past, True)
        loss = (out * grad_out).sum() + (carry * grad_carry).sum()
        return torch.autograd.grad(loss, (x, weight, bias, past))

    for got, want in zip(grads(causal_conv), grads(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_bf16_autocast_keeps_fp32_parameter_gradients():
    conv = torch.nn.Conv1d(8, 8, 4, groups=8)
    x = torch.randn(2, 16, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = causal_conv(x, conv.weight.squeeze(1), conv.bias)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and conv.bias.grad.dtype == torch.float32
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0
