"""AdaBelief against its paper's Algorithm 2 written out with plain tensors, on a linear memory
with the l2 bias: every gradient of a mini-batch at the mini-batch's start weights, the
weights after each token read by its query.  Tolerance: float64, 1e-9 absolute (values of
order 1)."""

from __future__ import annotations

import pytest
import torch

from miraslab.api import memory_op
from miraslab.testing import RuleCase, check_component, random_inputs

TOL = 1e-9
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def oracle(rule, q, k, v, gates, chunk):
    """W_t = alpha_t W_{t-1} - theta_t m_hat_t / (sqrt(s_hat_t) + eps), g_t taken at the weights
    of the chunk's start, normalised by ||k_t||^2 (the engine's default ``normalized``)."""
    w = rule.initial_state(q.shape[0]).weights["w"]
    m = s = torch.zeros_like(w)
    start, outputs = w, []
    for t in range(q.shape[2]):
        if t % chunk == 0:
            start = w
        kt, vt = k[:, :, t], v[:, :, t]
        error = torch.einsum("bhoi,bhi->bho", start, kt) - vt
        g = error[..., :, None] * kt[..., None, :] / kt.pow(2).sum(-1)[..., None, None]
        m = BETA1 * m + (1 - BETA1) * g
        s = BETA2 * s + (1 - BETA2) * (g - m) ** 2 + EPS
        m_hat, s_hat = m / (1 - BETA1 ** (t + 1)), s / (1 - BETA2 ** (t + 1))
        log_alpha = rule.retention.log_alpha({n: x[:, :, t : t + 1] for n, x in gates.items()})
        alpha = log_alpha[:, :, 0].exp()[..., None, None] if log_alpha is not None else 1.0
        theta = gates["lr"][:, :, t][..., None, None]
        w = alpha * w - theta * m_hat / (s_hat.sqrt() + EPS)
        outputs.append(torch.einsum("bhoi,bhi->bho", w, q[:, :, t]))
    return torch.stack(outputs, dim=2), w


@pytest.mark.parametrize("retention", ["none", "decay"])
@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("path", ["recurrent", "chunked"])
def test_both_paths_equal_the_papers_algorithm(retention, chunk, path):
    rule = RuleCase("linear", "l2", retention, "adabelief").build()
    q, k, v, gates, _ = random_inputs(rule, seq=10, scale=2.0)
    with torch.no_grad():
        y, state = memory_op(rule, q, k, v, gates, chunk_size=chunk, path=path)
        want_y, want_w = oracle(rule, q, k, v, gates, chunk)
    assert y.dtype == torch.float64
    assert (y - want_y).abs().max() <= TOL
    assert (state.weights["w"] - want_w).abs().max() <= TOL


def test_a_sequence_split_across_two_calls_continues_exactly():
    rule = RuleCase("mlp", "l2", "decay", "adabelief").build()
    q, k, v, gates, _ = random_inputs(rule, seq=10)
    with torch.no_grad():
        whole, _ = memory_op(rule, q, k, v, gates, chunk_size=4)
        first, middle = memory_op(
            rule,
            q[:, :, :6],
            k[:, :, :6],
            v[:, :, :6],
            {n: g[:, :, :6] for n, g in gates.items()},
            chunk_size=4,
        )
        second, _ = memory_op(
            rule, q[:, :, 6:], k[:, :, 6:], v[:, :, 6:], {n: g[:, :, 6:] for n, g in gates.items()}, middle, 4
        )
    assert (torch.cat([first, second], 2) - whole).abs().max() <= TOL


def test_the_kit_holds_it_to_its_reference_step():
    report = check_component("algorithm", "adabelief")
    assert "reference_step" in report.reference
