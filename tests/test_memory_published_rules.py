"""Configurations equal the published recurrences, each written independently here.

Tolerance: float64, atol 1e-10 (the engine and the loops differ only in summation order).
"""

from __future__ import annotations

import pytest
import torch
from memory_cases import make_rule, random_inputs

from miraslab.memory.paths.memory_op import memory_op

ATOL = 1e-10


def rows(gate):
    """A gate per head (B, H) or per value channel (B, H, d) as a factor on (B, H, d, d): diag(alpha) S."""
    return gate[..., None, None] if gate.dim() == 2 else gate[..., None]


def delta_rule(q, k, v, beta, alpha=None):
    """DeltaNet: S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T;  o_t = S_t q_t.

    Gated DeltaNet (arXiv 2412.06464 eq. 10): S_t = alpha_t S_{t-1} (I - beta_t k k^T) + beta_t v k^T,
    with alpha_t a scalar or, per value channel, diag(alpha_t).
    """
    batch, heads, seq, d = q.shape
    state = q.new_zeros(batch, heads, d, d)
    eye = torch.eye(d, dtype=q.dtype)
    out = []
    for t in range(seq):
        kt, vt, qt, bt = k[:, :, t], v[:, :, t], q[:, :, t], beta[:, :, t, None, None]
        decayed = state if alpha is None else rows(alpha[:, :, t]) * state
        state = decayed @ (eye - bt * kt.unsqueeze(-1) @ kt.unsqueeze(-2)) + bt * vt.unsqueeze(
            -1
        ) @ kt.unsqueeze(-2)
        out.append((state @ qt.unsqueeze(-1)).squeeze(-1))
    return torch.stack(out, dim=2)


def titans_momentum(q, k, v, theta, eta, alpha):
    """Titans eq. 13-14 with a linear memory and l2 loss: S_t = eta S - theta grad; M_t = alpha M + S
    (eta and alpha scalars or, per value channel, diagonal matrices on the left)."""
    batch, heads, seq, d = q.shape
    memory = q.new_zeros(batch, heads, d, d)
    surprise = torch.zeros_like(memory)
    out = []
    for t in range(seq):
        kt, vt = k[:, :, t].unsqueeze(-1), v[:, :, t].unsqueeze(-1)
        grad = (memory @ kt - vt) @ kt.transpose(-1, -2)
        surprise = rows(eta[:, :, t]) * surprise - theta[:, :, t, None, None] * grad
        memory = rows(alpha[:, :, t]) * memory + surprise
        out.append((memory @ q[:, :, t].unsqueeze(-1)).squeeze(-1))
    return torch.stack(out, dim=2)


def linear_attention(q, k, v, theta):
    """Hebbian memory: M_t = M_{t-1} + theta_t v_t k_t^T, o_t = M_t q_t (causal linear attention)."""
    scores = (q @ k.transpose(-1, -2)) * theta.unsqueeze(-2)
    return scores.tril() @ v


def test_linear_l2_gd_without_retention_is_the_delta_rule():
    rule = make_rule("linear", "l2", "none", "gd")
    q, k, v, gates, _ = random_inputs(rule, seq=12)
    expected = delta_rule(q, k, v, gates["lr"])
    for path in ("recurrent", "chunked"):
        y, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path=path)
        torch.testing.assert_close(y, expected, atol=ATOL, rtol=0)


def test_decay_with_gradients_at_the_decayed_state_is_the_gated_delta_rule():
    rule = make_rule("linear", "l2", "decay", "gd", options={"retention": {"gradient_at": "decayed"}})
    q, k, v, gates, _ = random_inputs(rule, seq=12)
    expected = delta_rule(q, k, v, gates["lr"], alpha=torch.exp(gates["decay"]))
    for path in ("recurrent", "chunked"):
        y, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path=path)
        torch.testing.assert_close(y, expected, atol=ATOL, rtol=0)


def test_momentum_and_decay_are_titans_surprise_rule():
    rule = make_rule("linear", "l2", "decay", "momentum")
    q, k, v, gates, _ = random_inputs(rule, seq=12)
    expected = titans_momentum(q, k, v, gates["lr"], torch.exp(gates["momentum"]), torch.exp(gates["decay"]))
    y, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path="chunked")
    torch.testing.assert_close(y, expected, atol=ATOL, rtol=0)


def test_channelwise_decay_is_the_gated_delta_rule_with_a_diagonal_gate():
    """diag(alpha_t) S_{t-1} (I - beta k k^T) + beta v k^T, alpha_t one per value channel."""
    rule = make_rule(
        "linear",
        "l2",
        "decay",
        "gd",
        options={"retention": {"gradient_at": "decayed"}},
        channelwise=("decay",),
    )
    q, k, v, gates, _ = random_inputs(rule, seq=12)
    assert gates["decay"].shape == (2, 2, 12, 4)
    expected = delta_rule(q, k, v, gates["lr"], alpha=torch.exp(gates["decay"]))
    for path in ("recurrent", "chunked"):
        y, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path=path)
        torch.testing.assert_close(y, expected, atol=ATOL, rtol=0)


def test_channelwise_decay_and_momentum_are_titans_rule_with_diagonal_gates():
    rule = make_rule("linear", "l2", "decay", "momentum", channelwise=("decay", "momentum"))
    q, k, v, gates, _ = random_inputs(rule, seq=12)
    assert gates["decay"].shape == gates["momentum"].shape == (2, 2, 12, 4)
    expected = titans_momentum(q, k, v, gates["lr"], torch.exp(gates["momentum"]), torch.exp(gates["decay"]))
    for path in ("recurrent", "chunked"):
        y, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path=path)
        torch.testing.assert_close(y, expected, atol=ATOL, rtol=0)


def test_dot_bias_is_linear_attention_at_any_chunk_size():
    # the Hebbian gradient does not depend on the weights, so mini-batching changes nothing
    rule = make_rule("linear", "dot", "none", "gd")
    q, k, v, gates, _ = random_inputs(rule, seq=12)
    expected = linear_attention(q, k, v, gates["lr"])
    for chunk in (1, 5, 12):
        y, _ = memory_op(rule, q, k, v, gates, chunk_size=chunk, path="chunked")
        torch.testing.assert_close(y, expected, atol=ATOL, rtol=0)


def test_mini_batch_gradients_use_the_chunk_start_weights():
    """Titans eq. 16-18: inside a chunk every gradient is taken at the chunk-start state."""
    rule = make_rule("linear", "l2", "none", "gd")
    q, k, v, gates, _ = random_inputs(rule, seq=4)
    theta = gates["lr"]
    memory = q.new_zeros(2, 2, 4, 4)
    out = []
    for t in range(4):  # one chunk of 4 starting from zero weights: grad = (0 k - v) k^T
        memory = memory + theta[:, :, t, None, None] * v[:, :, t].unsqueeze(-1) @ k[:, :, t].unsqueeze(-2)
        out.append((memory @ q[:, :, t].unsqueeze(-1)).squeeze(-1))
    y, _ = memory_op(rule, q, k, v, gates, chunk_size=4)
    torch.testing.assert_close(y, torch.stack(out, dim=2), atol=ATOL, rtol=0)


def test_omega_with_window_1_and_no_gate_is_its_inner_bias():
    from memory_cases import component

    from miraslab.memory.rule.build import build_rule
    from miraslab.memory.spec import MemorySpec

    def rule_with(bias):
        torch.manual_seed(0)
        spec = MemorySpec(
            memory=component("memory", "mlp"),
            bias=bias,
            retention=component("retention", "decay"),
            algorithm=component("algorithm", "momentum"),
        )
        return build_rule(spec, 2, 4, 4).double()

    omega = rule_with(component("bias", "omega", window=1, gated=False, inner={"name": "huber"}))
    huber = rule_with(component("bias", "huber", data_dependent=False, delta=1.0))
    q, k, v, gates, _ = random_inputs(huber, seq=10)
    y_omega, _ = memory_op(omega, q, k, v, gates, chunk_size=3)
    y_huber, _ = memory_op(huber, q, k, v, gates, chunk_size=3)
    torch.testing.assert_close(y_omega, y_huber, atol=ATOL, rtol=0)


def omega_loop(q, k, v, theta, gamma, window=3, decay=0.9):
    """Atlas eq. 9, linear memory, l2: M_t = M_{t-1} - theta_t sum_{i=t-c+1}^t decay^(t-i) G_i (M k_i - v_i) k_i^T,
    with G_i = gamma_i (B, H) or diag(gamma_i) (B, H, d_v) per value channel."""
    batch, heads, seq, d = q.shape
    memory = q.new_zeros(batch, heads, d, d)
    out = []
    for t in range(seq):
        grad = 0
        for i in range(max(0, t - window + 1), t + 1):
            ki, vi = k[:, :, i].unsqueeze(-1), v[:, :, i].unsqueeze(-1)
            g = gamma[:, :, i, :, None] if gamma.dim() == 4 else gamma[:, :, i, None, None]
            grad = grad + decay ** (t - i) * (g * (memory @ ki - vi)) @ ki.transpose(-1, -2)
        memory = memory - theta[:, :, t, None, None] * grad
        out.append((memory @ q[:, :, t].unsqueeze(-1)).squeeze(-1))
    return torch.stack(out, dim=2)


def test_omega_window_sums_the_gated_gradients_of_the_last_c_tokens():
    rule = make_rule("linear", "omega", "none", "gd")  # window 3, decay_base 0.9 (memory_cases.OPTIONS)
    q, k, v, gates, _ = random_inputs(rule, seq=9)
    y, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path="chunked")
    torch.testing.assert_close(y, omega_loop(q, k, v, gates["lr"], gates["omega"]), atol=ATOL, rtol=0)


def test_omega_window_with_channelwise_gates_weights_each_value_channel():
    """gamma_i per value channel: one weight per row of M (per output channel of each gradient)."""
    rule = make_rule("linear", "omega", "none", "gd", channelwise_window=True)
    q, k, v, gates, _ = random_inputs(rule, seq=9)
    assert gates["omega"].shape == (2, 2, 9, 4)
    want = omega_loop(q, k, v, gates["lr"], gates["omega"])
    for path in ("chunked", "recurrent"):
        y, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path=path)
        torch.testing.assert_close(y, want, atol=ATOL, rtol=0)


def test_kl_retention_keeps_rows_on_the_scaled_simplex():
    rule = make_rule("linear", "l2", "kl", "gd")
    q, k, v, gates, _ = random_inputs(rule, seq=8)
    _, state = memory_op(rule, q, k, v, gates, chunk_size=4)
    rows = state.weights["w"].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-12, rtol=0)
    assert (state.weights["w"] > 0).all()


def memora_loop(q, k, v, theta, alpha, logits, scale, center):
    """Memora (Miras sec. 5) with a linear memory: L_t = alpha_t L_{t-1} - theta_t grad l2(W_{t-1}),
    W_t = c softmax(L_t) per row; centred, W_t = c (softmax(L_t) - 1/d)."""
    batch, heads, seq, _ = q.shape
    state = logits.expand(batch, heads, *logits.shape[-2:])

    def weights(state):
        return scale * (torch.softmax(state, -1) - (1.0 / state.shape[-1] if center else 0.0))

    out = []
    for t in range(seq):
        kt, vt = k[:, :, t].unsqueeze(-1), v[:, :, t].unsqueeze(-1)
        grad = (weights(state) @ kt - vt) @ kt.transpose(-1, -2)
        state = alpha[:, :, t, None, None] * state - theta[:, :, t, None, None] * grad
        out.append((weights(state) @ q[:, :, t].unsqueeze(-1)).squeeze(-1))
    return torch.stack(out, dim=2)


@pytest.mark.parametrize("center", [False, True])
def test_kl_retention_is_memoras_mirror_descent_centred_or_not(center):
    rule = make_rule("linear", "l2", "kl", "gd", options={"retention": {"scale": 3.0, "center": center}})
    q, k, v, gates, _ = random_inputs(rule, seq=9)
    logits = rule.arch.init.w
    expected = memora_loop(q, k, v, gates["lr"], torch.exp(gates["decay"]), logits, 3.0, center)
    for path in ("recurrent", "chunked"):
        y, state = memory_op(rule, q, k, v, gates, chunk_size=1, path=path)
        torch.testing.assert_close(y, expected, atol=ATOL, rtol=0)
    rows = state.weights["w"].sum(-1)
    torch.testing.assert_close(rows, torch.full_like(rows, 0.0 if center else 3.0), atol=1e-12, rtol=0)
    assert (state.weights["w"] < 0).any() == center


def test_elastic_net_zeroes_small_weights_at_chunk_ends():
    rule = make_rule("linear", "l2", "elastic_net", "gd")
    with torch.no_grad():
        rule.retention.log_threshold.fill_(torch.log(torch.tensor(0.05)).item())
    q, k, v, gates, _ = random_inputs(rule, seq=8)
    _, state = memory_op(rule, q, k, v, gates, chunk_size=4)
    weights = state.weights["w"]
    assert ((weights == 0) | (weights.abs() > 0)).all() and (weights == 0).any()


def test_muon_chunk_update_is_orthogonal_up_to_its_norm():
    from miraslab.plugins.algorithm.muon import newton_schulz

    update = torch.randn(3, 6, 4, dtype=torch.double)
    ortho = newton_schulz(update, steps=10)
    singular = torch.linalg.svdvals(ortho)
    assert ((singular > 0.6) & (singular < 1.3)).all()  # quintic NS: singular values near 1, not exactly
