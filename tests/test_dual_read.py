"""dual_read against the same expression through autograd (float64: values 1e-12, gradients 1e-10)."""

from __future__ import annotations

import pytest
import torch

from miraslab.memory.kernels.dual_read import dual_read


def reference(x, h, delta, coef, beta, sigma, w, s):
    y = (coef * (x @ h.transpose(-1, -2))) @ delta + (beta * x) @ w.transpose(-1, -2)
    return y + (sigma * x) @ s.transpose(-1, -2) if sigma is not None else y


@pytest.mark.parametrize("momentum", [True, False])
def test_matches_autograd_and_gradchecks(momentum):
    g = torch.Generator().manual_seed(0)

    def make(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    b, heads, length, d_in, d_out = 2, 2, 5, 3, 4
    inputs = [
        make(b, heads, length, d_in),  # x
        make(b, heads, length, d_in),  # h
        make(b, heads, length, d_out),  # delta
        make(b, heads, length, length),  # coef
        make(b, heads, length, 1),  # beta
        make(b, heads, length, 1) if momentum else None,  # sigma
        make(b, heads, d_out, d_in),  # W
        make(b, heads, d_out, d_in) if momentum else None,  # S
    ]
    ours, want = dual_read(*inputs), reference(*inputs)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    used = [t for t in inputs if t is not None]
    cotangent = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((ours * cotangent).sum(), used)
    expected = torch.autograd.grad((want * cotangent).sum(), used)
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(dual_read, tuple(inputs))


def test_an_expanded_state_gets_its_gradient_summed():
    """The chunk-start weights of a first chunk are the learned W expanded over the batch."""
    g = torch.Generator().manual_seed(1)
    learned = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x, h = (torch.randn(3, 2, 5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    delta, coef = torch.randn(3, 2, 5, 4, dtype=torch.float64), torch.randn(3, 2, 5, 5, dtype=torch.float64)
    beta = torch.rand(3, 2, 5, 1, dtype=torch.float64)
    w = learned.unsqueeze(0).expand(3, -1, -1, -1)
    (got,) = torch.autograd.grad(dual_read(x, h, delta, coef, beta, None, w, None).sum(), learned)
    (want,) = torch.autograd.grad(reference(x, h, delta, coef, beta, None, w, None).sum(), learned)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_column_product_matches_matmul_and_its_gradients():
    """The one-column product the channel-wise read and the momentum carry use, against
    autograd through a @ b (float64, 1e-12), with a broadcast leading dimension too."""
    from miraslab.memory.kernels.batched import column_product

    g = torch.Generator().manual_seed(5)
    for a_shape, b_shape in (((2, 3, 8, 8), (2, 3, 8, 1)), ((2, 3, 8, 8), (3, 8, 1))):
        a = torch.randn(*a_shape, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(*b_shape, generator=g, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(*a_shape[:-1], 1, generator=g, dtype=torch.float64)
        ours = torch.autograd.grad((column_product(a, b) * upstream).sum(), (a, b))
        want = torch.autograd.grad(((a @ b) * upstream).sum(), (a, b))
        torch.testing.assert_close(column_product(a, b), a @ b, rtol=1e-12, atol=1e-12)
        for got, ref in zip(ours, want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_times_transposed_matches_matmul_and_its_gradients():
    """x @ w^T with w's gradient made in w's layout, against autograd through the matmul
    (float64, 1e-12): w of x's leading shape, expanded over the batch (a first chunk's
    learned weights), and broadcast; w's gradient comes out contiguous."""
    from miraslab.memory.kernels.batched import times_transposed

    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 3, 8, 4, generator=g, dtype=torch.float64)
    full = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    learned = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    for leaf, w in ((full, full), (learned, learned.expand(2, -1, -1, -1)), (learned, learned)):
        ours = torch.autograd.grad((times_transposed(x, w) * upstream).sum(), (x, leaf))
        want = torch.autograd.grad(((x @ w.transpose(-1, -2)) * upstream).sum(), (x, leaf))
        torch.testing.assert_close(times_transposed(x, w), x @ w.transpose(-1, -2), rtol=1e-12, atol=1e-12)
        for got, ref in zip(ours, want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    (grad_w,) = torch.autograd.grad((times_transposed(x, full) * upstream).sum(), full)
    assert grad_w.is_contiguous()
