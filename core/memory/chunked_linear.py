"""The chunked path for a matrix memory whose inner gradient is affine in the weights.

With M(x) = W x and an l2 or dot bias, a token's gradient at the chunk-start weights is
``delta_j k_j^T`` with ``delta_j = c (a_j W_0 k_j) + b_j`` (c = 1, b = -v for l2; c = 0 for
dot).  Everything the general chunked path computes is then affine in W_0 (and S_0):

    reads      y_i   = W_0 q~_i + sigma_i S_0 q_i + r_i
                 q~  = beta q + c A (s a o k),  r = A (s o b),  A = K o (q k^T)
    chunk end  W_end = W_0 (beta_L I + c P_W) + sigma_L S_0 + R_W,  P_W = k^T diag(K_L s a) k
               S_end = eta_L S_0 + c W_0 P_S + R_S

So every chunk's q~, r, P and R are computed at once, batched over chunks with large
matmuls; only the (d x d) recurrence from one chunk's weights to the next is a loop; then
all reads are one batched matmul.  Same semantics as ``chunked._piece`` (tested equal),
much less per-chunk work.  Used for whole chunks that start at a chunk boundary.
"""

from __future__ import annotations

import torch

from .coefficients import chunk_coefficients, log_alpha_or_zeros
from .parts import Gates, at_least_fp32
from .rule import MemoryRule
from .sources import keep_window, window_band
from .state import MemoryState


def supports(rule: MemoryRule) -> bool:
    return (
        rule.arch.linear_map
        and rule.bias.gradient_slope is not None
        and not rule.nonlinear
        and not rule.retention.needs_decayed_update
        and not rule.channelwise_lr
    )


def _windows(x: torch.Tensor, buffer: torch.Tensor | None, keep: int, chunk: int) -> torch.Tensor:
    """(B, H, n * chunk, ...) -> (B, H, n, keep + chunk, ...): each chunk with the ``keep`` tokens before it."""
    batch, heads = x.shape[:2]
    pad = x.new_zeros(batch, heads, keep, *x.shape[3:])
    if buffer is not None and buffer.shape[2]:
        pad[:, :, keep - buffer.shape[2] :] = buffer.to(x.dtype)
    full = torch.cat([pad, x], dim=2)
    return full.unfold(2, keep + chunk, chunk).movedim(-1, 3)


def whole_chunks(
    rule: MemoryRule,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    state: MemoryState,
    chunk_size: int,
) -> tuple[torch.Tensor, MemoryState]:
    """q, k, v (B, H, n * chunk_size, d) from a state at a chunk boundary."""
    retention, algorithm, bias = rule.retention, rule.algorithm, rule.bias
    batch, heads, total = q.shape[:3]
    chunk, n = chunk_size, total // chunk_size
    keep = rule.window - 1

    def per_chunk(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, heads, n, chunk, *x.shape[3:])

    qc, gc = per_chunk(q), {name: per_chunk(g) for name, g in gates.items()}
    bias_gates = rule.bias_gate_names()
    if keep:
        k_src = _windows(k, state.window_keys, keep, chunk)
        v_src = _windows(v, state.window_values, keep, chunk)
        src_gates = {
            name: _windows(gates[name], (state.window_gates or {}).get(name), keep, chunk)
            for name in bias_gates
        }
    else:
        k_src, v_src, src_gates = per_chunk(k), per_chunk(v), {name: gc[name] for name in bias_gates}

    # the coefficients of every chunk at once
    theta = at_least_fp32(algorithm.lr(gc))
    log_alpha = log_alpha_or_zeros(rule, gc, qc.shape[:4], q)
    band = window_band(rule, src_gates, keep, chunk, theta.dtype, q.device) if keep else None
    coefficients = chunk_coefficients(rule, gc, log_alpha, theta, band)
    cum_alpha, beta, coef = coefficients.cum_alpha, coefficients.beta, coefficients.coef
    carry, momentum_coef, cum_eta = coefficients.carry, coefficients.momentum_coef, coefficients.cum_eta

    # per-source scales: normalised steps (1 / ||k||^2), and the decayed gradient point
    dtype = q.dtype
    source_scale = torch.ones(k_src.shape[:4], dtype=cum_alpha.dtype, device=q.device)
    if algorithm.normalized:
        source_scale = 1.0 / at_least_fp32(k_src).pow(2).sum(-1).clamp_min(1e-6)
    point = torch.exp(cum_alpha) if retention.gradient_at_decayed else None  # window 1 here
    slope = bias.gradient_slope
    offset = bias.gradient_offset(v_src, src_gates)  # (B, H, n, sources, d_v)

    scores = coef.to(dtype) * (qc @ k_src.transpose(-1, -2))  # A = K o (q k^T)
    grad_keys = (source_scale * point if point is not None else source_scale).unsqueeze(-1).to(dtype) * k_src
    q_eff = beta.unsqueeze(-1).to(dtype) * qc
    if slope:
        q_eff = q_eff + slope * (scores @ grad_keys)
    reads_offset = scores @ (source_scale.unsqueeze(-1).to(dtype) * offset)

    def end_terms(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P = k^T diag(row s a) k and R = b^T diag(row s) k for a chunk-end coefficient row."""
        weighted_offset = (row * source_scale).unsqueeze(-1).to(dtype) * offset
        projector = (row.unsqueeze(-1).to(dtype) * grad_keys).transpose(-1, -2) @ k_src if slope else None
        return projector, weighted_offset.transpose(-1, -2) @ k_src

    p_w, r_w = end_terms(coef[..., -1, :])
    if carry is not None:
        p_s, r_s = end_terms(momentum_coef[..., -1, :])
        eta_end = torch.exp(cum_eta[..., -1])

    # the recurrence from one chunk's weights to the next: small (d x d) matmuls only.
    # unbind once: indexing chunk c in the loop would zero-fill a full-size gradient per chunk
    def each(x: torch.Tensor | None) -> tuple:
        return x.unbind(2) if x is not None else (None,) * n

    beta_end, r_w_c, p_w_c = each(beta[..., -1, None, None]), each(r_w), each(p_w)
    if carry is not None:
        carry_end, eta_c, r_s_c, p_s_c = (
            each(carry[..., -1, None, None]),
            each(eta_end[..., None, None]),
            each(r_s),
            each(p_s),
        )
    weights = state.weights["w"]
    momentum = state.momentum["w"] if carry is not None else None
    starts_w, starts_s = [], []
    for c in range(n):
        starts_w.append(weights)
        following = beta_end[c] * weights + r_w_c[c]
        if slope:
            following = following + slope * (weights @ p_w_c[c])
        if momentum is not None:
            starts_s.append(momentum)
            following = following + carry_end[c] * momentum
            momentum = eta_c[c] * momentum + r_s_c[c]
            if slope:
                momentum = momentum + slope * (starts_w[-1] @ p_s_c[c])
        weights = following

    # all reads at once: [q~ | sigma q] @ [W_c^T ; S_c^T] + r
    if momentum is None:
        y = q_eff @ torch.stack(starts_w, dim=2).to(dtype).transpose(-1, -2) + reads_offset
    else:
        starts = torch.cat([torch.stack(starts_w, dim=2), torch.stack(starts_s, dim=2)], dim=-1).to(dtype)
        inputs = torch.cat([q_eff, carry.unsqueeze(-1).to(dtype) * qc], dim=-1)
        y = inputs @ starts.transpose(-1, -2) + reads_offset

    state.start = state.weights = {"w": weights}
    if momentum is not None:
        state.momentum = {"w": momentum}
    state.log_decay = state.log_decay.new_zeros(state.log_decay.shape)  # every chunk closed
    state.lr_sum = state.lr_sum.new_zeros(state.lr_sum.shape)
    state.offset = 0
    if keep:
        keep_window(
            rule, state, k_src[:, :, -1], v_src[:, :, -1], {n_: g[:, :, -1] for n_, g in src_gates.items()}
        )
    return y.reshape(batch, heads, total, -1), state
