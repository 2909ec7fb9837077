"""The general path: an algorithm with state of its own (``LearningAlgorithm.stateful``).

Such an algorithm is an arbitrary map (g_t, state_{t-1}) -> (u_t, state_t), so the
factored forms of the other paths (the weights after token i as a sum of rank-one
gradient terms with scalar coefficients) do not exist for it.  Per piece of a chunk this
path therefore materialises what it must:

    g_i   = sum_j Gamma[i, j] grad l(W_grad; k_j, v_j)   (every source at the chunk-start
                                                  weights, the factors ``rule.factors`` gives
                                                  the other paths, materialised as delta_j h_j^T;
                                                  Gamma the Omega window's band, the identity
                                                  with window 1)
    u_i, state_i = algorithm.update(g_i, state_{i-1}, gates_i)
    W_i   = alpha_i W_{i-1} + lr_scale * u_i
    y_i   = M_{W_i}(q_i)                         (one batched read over the piece's W_i)

The recurrent path runs the same token step on pieces of one token, so the two paths take
the same gradients in the same order.  A loop over a chunk's tokens: the fallback that runs
any optimizer, at the cost docs/memory.md states; gd, momentum and muon keep their paths.
"""

from __future__ import annotations

import dataclasses

import torch

from ..kernels.batched import outer_sum
from ..rule.axes import Weights, at_least_fp32
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from .chunk_end import add_piece_decay, end_piece
from .coefficients import scaled
from .omega_window import keep_window, window_band, with_window
from .tokens import Result, Tokens


def general_chunked(
    rule: MemoryRule, tokens: Tokens, state: MemoryState, chunk_size: int, reads: str = "token"
) -> Result:
    """q, k, v (B, H, T, d): one piece per chunk (the first may finish a chunk the state began)."""
    total = tokens.q.shape[2]
    lengths = [min(chunk_size - state.offset, total)]
    while sum(lengths) < total:
        lengths.append(min(chunk_size, total - sum(lengths)))
    outputs, start = [], 0
    for length in lengths:
        y, state = general_piece(rule, tokens.at(slice(start, start + length)), state, chunk_size, reads)
        outputs.append(y)
        start += length
    return torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0], state


def general_piece(
    rule: MemoryRule, tokens: Tokens, state: MemoryState, chunk_size: int, reads: str = "token"
) -> Result:
    """A piece of L tokens inside one chunk: reads (B, H, L, d_v) and the state after them
    (``reads = "chunk"``: every token at the chunk-start weights)."""
    q, k, v, gates = tokens
    state = dataclasses.replace(state)
    retention = rule.retention
    log_alpha = retention.log_alpha(gates)
    if log_alpha is None:
        log_alpha = torch.zeros_like(at_least_fp32(rule.algorithm.lr(gates)))
    cum = torch.cumsum(at_least_fp32(log_alpha), dim=-1)  # A_i since the piece start, (B, H, L)
    weight_scale = None
    if retention.gradient_at_decayed:  # the gated delta rule's point: the chunk-start weights decayed to i
        weight_scale = torch.exp(state.log_decay.unsqueeze(-1) + cum)
    keys, values, source_gates, buffered = with_window(rule, state, k, v, gates)
    factors = rule.factors(state.start, keys, values, source_gates, weight_scale)
    band = None
    if rule.window > 1:  # Omega: g_i = sum_j gamma_j omega^(i-j) grad_j over the window's sources
        band = window_band(rule, source_gates, buffered, q.shape[2], cum.dtype, q.device)
        band = band.expand(*keys.shape[:2], *band.shape[-2:])  # (B, H, L, sources)
    weights, algorithm_state = state.weights, state.algorithm_state
    per_token: dict[str, list[torch.Tensor]] = {name: [] for name in weights}
    for i in range(q.shape[2]):
        grad = {
            name: delta[:, :, i, :, None] * h[:, :, i, None, :]
            if band is None
            else outer_sum(band[:, :, i], delta, h)
            for name, (h, delta) in factors.items()
        }
        update, algorithm_state = rule.algorithm.update(
            grad, algorithm_state, {n: g[:, :, i] for n, g in gates.items()}
        )
        alpha = torch.exp(log_alpha[:, :, i])[..., None, None]
        weights = _next_weights(rule, state, weights, update, alpha)
        for name, w in weights.items():
            per_token[name].append(w)
    if reads == "chunk":
        y = rule.read(state.start, q)
    else:
        stacked = {name: torch.stack(ws, dim=2) for name, ws in per_token.items()}  # (B, H, L, d_out, d_in)
        y = rule.apply_arch(q, lambda name, x: torch.einsum("bhloi,bhli->bhlo", stacked[name].to(x.dtype), x))
    state.weights, state.algorithm_state = weights, algorithm_state
    add_piece_decay(rule, state, gates, cum)
    state.offset += q.shape[2]
    keep_window(rule, state, keys, values, source_gates)
    return end_piece(rule, state, q, y, chunk_size, reads)


def _next_weights(
    rule: MemoryRule, state: MemoryState, weights: Weights, update: Weights, alpha: torch.Tensor
) -> Weights:
    """W_i = alpha_i W_{i-1} + lr_scale u_i (the retention's factor on updates inside a chunk)."""
    return {
        name: alpha.to(w.dtype) * w
        + scaled(update[name], rule.retention.lr_scale(state.extra, name)).to(w.dtype)
        for name, w in weights.items()
    }


def general_step(
    rule: MemoryRule, tokens: Tokens, state: MemoryState, chunk_size: int, reads: str = "token"
) -> Result:
    """One token (q, k, v (B, H, d), gates {name: (B, H)}): the recurrent path's step."""
    q, k, v, gates = tokens
    one = Tokens(
        q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), {n: g.unsqueeze(2) for n, g in gates.items()}
    )
    y, state = general_piece(rule, one, state, chunk_size, reads)
    return y[:, :, 0], state
