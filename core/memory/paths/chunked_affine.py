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
much less per-chunk work.  Used for whole chunks that start at a chunk boundary.  The
normalised step s folds into the learning-rate rows.  Without an Omega window or a decayed
gradient point (a = 1) the pass runs as ``kernels.linear_chunks.LinearChunks`` (backward by
hand); the autograd form below stays for those cases and as the tests' reference.
"""

from __future__ import annotations

import torch

from ..kernels.batched import matmul_add
from ..kernels.linear_chunks import chunk_list, chunk_recurrence, end_terms, linear_chunks
from ..rule.axes import at_least_fp32
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from .coefficients import piece_coefficients, piece_rates
from .omega_window import keep_window, window_band, with_window
from .tokens import Result, Tokens


def supports(rule: MemoryRule) -> bool:
    return (
        rule.arch.linear_map
        and rule.bias.gradient_slope is not None
        and not rule.nonlinear
        and not rule.retention.needs_decayed_update
        and not rule.channelwise
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
    tokens: Tokens,
    state: MemoryState,
    chunk_size: int,
    hand_written_backward: bool = True,
    reads: str = "token",
) -> Result:
    """q, k, v (B, H, n * chunk_size, d) from a state at a chunk boundary.

    Without an Omega window or a decayed gradient point, the pass is one autograd Function
    with a hand-written backward (``kernels.linear_chunks``); ``hand_written_backward =
    False`` builds the same computation from autograd ops instead (the tests' reference).
    ``reads = "chunk"``: every token reads its chunk's start weights, ``y = q W_c^T``.
    """
    q, k, v, gates = tokens
    retention, algorithm, bias = rule.retention, rule.algorithm, rule.bias
    batch, heads, total = q.shape[:3]
    chunk, n = chunk_size, total // chunk_size
    keep = rule.window - 1

    def per_chunk(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, heads, n, chunk, *x.shape[3:])

    qc = per_chunk(q)
    bias_gates = {name: gates[name] for name in rule.bias_gate_names()}
    # the plugins see (B, H, T[, d_v]) tensors; their per-token results are windowed here
    offset = bias.gradient_offset(v, bias_gates)
    if keep:
        buffered = state.window_keys
        offset_buffer = None
        if buffered is not None and buffered.shape[2]:
            offset_buffer = bias.gradient_offset(state.window_values, state.window_gates)
        k_src = _windows(k, buffered, keep, chunk)
        offset = _windows(offset, offset_buffer, keep, chunk)  # zero-padded sources have k = 0
        src_gates = {
            name: _windows(g, (state.window_gates or {}).get(name), keep, chunk)
            for name, g in bias_gates.items()
        }
    else:
        k_src, offset = per_chunk(k), per_chunk(offset)  # (B, H, n, sources, d)

    # per-source scales: the normalised step (1 / ||k||^2) multiplies source j's gradient, so
    # it folds into the learning-rate row of the coefficients (or, behind an Omega band,
    # scales their source columns)
    dtype = q.dtype
    source_scale = None
    if algorithm.normalized:
        source_scale = 1.0 / at_least_fp32(k_src).pow(2).sum(-1).clamp_min(1e-6)
    if not keep and not retention.gradient_at_decayed and hand_written_backward:
        rates = piece_rates(rule, gates, q, chunks=n, row_scale=source_scale)
        momentum = state.momentum["w"] if algorithm.momentum else None
        y, weights, momentum = linear_chunks(
            qc,
            k_src,
            offset,
            rates.theta_rows,
            rates.log_alpha,
            rates.log_eta,
            state.weights["w"],
            momentum,
            bias.gradient_slope,
            chunk_reads=reads == "chunk",
        )
        return y.reshape(batch, heads, total, -1), _closed(state, weights, momentum)

    band = None
    if keep:
        theta_dtype = torch.promote_types(algorithm.lr(gates).dtype, torch.float32)
        band = window_band(rule, src_gates, keep, chunk, theta_dtype, q.device)
    row_scale = source_scale if not keep else None
    _, coefficients = piece_coefficients(rule, gates, q, band, chunks=n, row_scale=row_scale)
    beta, coef, carry = coefficients.beta, coefficients.coef, coefficients.carry
    momentum_coef = coefficients.momentum_coef
    if keep and source_scale is not None:
        coef = coef * source_scale.unsqueeze(-2)
        momentum_coef = momentum_coef * source_scale.unsqueeze(-2) if momentum_coef is not None else None

    slope = bias.gradient_slope
    # the gradient point: source j's prediction is taken at a_j W_0 (a = 1 unless decayed)
    grad_keys = k_src
    if retention.gradient_at_decayed:  # window 1 here
        grad_keys = torch.exp(coefficients.cum_alpha).unsqueeze(-1).to(dtype) * k_src

    if reads == "token":  # the dual form's terms (chunk-level reads have none)
        scores = coef.to(dtype) * (qc @ k_src.transpose(-1, -2))  # A = K o (q k^T)
        q_eff = beta.unsqueeze(-1).to(dtype) * qc
        if slope:
            q_eff = matmul_add(q_eff, scores, grad_keys, slope)
        reads_offset = scores @ offset

    # the chunk-end terms P = k^T diag(row) a k and R = b^T diag(row) k for the chunk-end
    # coefficient row of W (and of S), both rows in one matmul each: [row_W k | row_S k]
    rows = torch.stack(
        [coef[..., -1, :]] + ([momentum_coef[..., -1, :]] if carry is not None else []), dim=-1
    )
    projectors, shifts = end_terms(k_src, offset, rows, slope, grad_keys)
    state_dtype = torch.promote_types(state.weights["w"].dtype, torch.float32)
    d_key = k_src.shape[-1]

    # only the chunk recurrence is sequential, out of autocast so the state accumulates in
    # (at least) fp32
    with torch.autocast(device_type=q.device.type, enabled=False):
        starts_w, starts_s, weights, momentum = chunk_recurrence(
            state.weights["w"].to(state_dtype),
            state.momentum["w"].to(state_dtype) if carry is not None else None,
            chunk_list(beta[..., -1, None, None].to(state_dtype)),
            chunk_list(carry[..., -1, None, None].to(state_dtype)) if carry is not None else None,
            chunk_list(torch.exp(coefficients.cum_eta[..., -1, None, None]).to(state_dtype))
            if carry is not None
            else None,
            chunk_list(shifts.to(state_dtype), d_key),
            chunk_list(projectors.to(state_dtype), d_key) if projectors is not None else None,
        )

    if reads == "chunk":  # every token at its chunk's start weights: y = q W_c^T
        y = qc @ torch.stack(starts_w, dim=2).to(dtype).transpose(-1, -2)
    else:  # all reads at once: y = r + q~ W_c^T + sigma q S_c^T
        y = matmul_add(reads_offset, q_eff, torch.stack(starts_w, dim=2).to(dtype).transpose(-1, -2))
        if carry is not None:
            sigma_q = carry.unsqueeze(-1).to(dtype) * qc
            y = matmul_add(y, sigma_q, torch.stack(starts_s, dim=2).to(dtype).transpose(-1, -2))

    if keep:
        keep_window(rule, state, *with_window(rule, state, k, v, gates)[:3])
    return y.reshape(batch, heads, total, -1), _closed(state, weights, momentum)


def _closed(state: MemoryState, weights: torch.Tensor, momentum: torch.Tensor | None) -> MemoryState:
    """The state after whole chunks: every chunk closed, nothing pending."""
    state.start = state.weights = {"w": weights}
    if momentum is not None:
        state.momentum = {"w": momentum}
    state.log_decay = state.log_decay.new_zeros(state.log_decay.shape)
    state.sums = {n: s.new_zeros(s.shape) for n, s in state.sums.items()}
    state.offset = 0
    return state
