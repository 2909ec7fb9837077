"""The recurrent path: token by token, with materialised weights.

It is the oracle the chunked path is tested against, and the decoding path: its state
is O(1) in the context length (weights, momentum, a window of c-1 tokens).  The
mini-batch semantics match the chunked path exactly: gradients are taken at the
chunk-start weights ``state.start`` until ``chunk_size`` tokens have been applied.
"""

from __future__ import annotations

import dataclasses

import torch

from ..kernels.batched import outer_sum
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from . import general
from .chunk_end import close_chunk
from .coefficients import scaled
from .omega_window import keep_window, window_band, with_window
from .tokens import Result, Tokens


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A factor per head (B, H) or per value channel (B, H, d_v), shaped to scale (B, H, d_v, d_in)."""
    return x[..., None, None] if x.dim() == 2 else x[..., None]


def step(
    rule: MemoryRule,
    tokens: Tokens,
    state: MemoryState,
    chunk_size: int,
    reads: str = "token",
) -> Result:
    """One token: q, k, v (B, H, d); gates {name: (B, H) or (B, H, d_v)}.

    ``reads = "chunk"``: the token reads the chunk-start weights ``state.start``, before its
    update (and before the chunk's close, when it is the last); else the weights after them."""
    if rule.algorithm.stateful:  # an optimizer with state of its own: the general path's token step
        return general.general_step(rule, tokens, state, chunk_size, reads)
    q, k, v, gates = tokens
    y_chunk = rule.read(state.start, q.unsqueeze(2))[:, :, 0] if reads == "chunk" else None
    state = dataclasses.replace(state)
    retention, algorithm = rule.retention, rule.algorithm
    k, v = k.unsqueeze(2), v.unsqueeze(2)
    seq_gates = {n: g.unsqueeze(2) for n, g in gates.items()}

    log_alpha = retention.log_alpha(seq_gates)
    log_alpha = log_alpha[:, :, 0] if log_alpha is not None else torch.zeros_like(state.log_decay)
    log_decay = state.log_decay + log_alpha

    keys, values, source_gates, buffered = with_window(rule, state, k, v, seq_gates)
    theta = algorithm.lr(seq_gates)[:, :, 0]  # (B, H) or (B, H, d_v)
    weight_scale = None
    if retention.gradient_at_decayed:  # (B, H, sources[, d_v])
        weight_scale = torch.exp(log_decay).unsqueeze(2).expand(-1, -1, keys.shape[2], *log_decay.shape[2:])
    out_weight = rule.source_weights(theta.unsqueeze(2), source_gates)
    factors = rule.factors(state.start, keys, values, source_gates, weight_scale, out_weight)
    dtype = torch.promote_types(theta.dtype, torch.float32)
    coef = window_band(rule, source_gates, buffered, 1, dtype, q.device)[..., 0, :]
    if coef.dim() == 1:
        coef = coef.expand(*keys.shape[:2], -1)
    if not rule.channelwise_lr:
        coef = coef * theta.unsqueeze(-1)

    alpha = _rows(torch.exp(log_alpha))
    eta = None
    if algorithm.momentum:
        eta = _rows(torch.exp(algorithm.log_eta(seq_gates)[:, :, 0]))
    aux_alpha = None
    if retention.needs_decayed_update:
        aux_log = retention.aux_log_alpha(seq_gates)[:, :, 0]
        aux_alpha = torch.exp(aux_log)[..., None, None]
        state.aux_log_decay = state.aux_log_decay + aux_log

    new_weights, new_momentum, new_decayed = {}, {}, {}
    for name, (h, delta) in factors.items():
        grad_sum = outer_sum(coef, delta, h)  # theta_t * sum_j gamma_j omega^(t-j) grad_j
        update = -scaled(grad_sum, retention.lr_scale(state.extra, name))
        if eta is not None:
            new_momentum[name] = eta * state.momentum[name] + update
            update = new_momentum[name]
        new_weights[name] = alpha * state.weights[name] + update
        if aux_alpha is not None:
            new_decayed[name] = aux_alpha * state.decayed_update[name] - grad_sum
    state.weights = new_weights
    if eta is not None:
        state.momentum = new_momentum
    if aux_alpha is not None:
        state.decayed_update = new_decayed
    state.log_decay = log_decay
    sums = {}
    for name, value in rule.chunk_sums().items():  # s_t = alpha_t s_{t-1} + x_t
        x = value(seq_gates)[:, :, 0]
        sums[name] = torch.exp(log_alpha) * state.sums[name] + (
            x.unsqueeze(-1) if rule.channelwise_decay else x
        )
    state.sums = sums
    state.offset += 1
    keep_window(rule, state, keys, values, source_gates)
    if state.offset == chunk_size:
        state = close_chunk(rule, state)
    if y_chunk is not None:
        return y_chunk, state
    y = rule.read(state.weights, q.unsqueeze(2))[:, :, 0]
    return y, state


def recurrent(
    rule: MemoryRule,
    tokens: Tokens,
    state: MemoryState,
    chunk_size: int,
    reads: str = "token",
) -> Result:
    """q, k, v (B, H, T, d); a Python loop over tokens (use for decoding and as the oracle)."""
    outputs = []
    for t in range(tokens.q.shape[2]):
        y, state = step(rule, tokens.at(t), state, chunk_size, reads)
        outputs.append(y)
    return torch.stack(outputs, dim=2), state
