"""The chunked path of a matrix memory with channel-wise decays, in sub-chunks.

With alpha or eta per value channel each row of W has its own decays, so the dual form
needs one decay matrix per channel: (d_v x L x L) per chunk, elementwise work d_v times
that of a per-head decay.  Here a piece of a chunk runs as m sub-chunks of ``SUB`` tokens:

* the inner gradients of all its tokens are taken once, at the chunk-start weights (the
  mini-batch semantics do not change);
* the coefficients of the m sub-chunks are computed at once, (m x d_v x SUB x SUB);
* the state is carried from one sub-chunk to the next by its (d_v x d) update, a short loop;
* the reads of all sub-chunks then run as one batched dual-form read.

Same semantics as ``chunked._piece`` on pieces of ``SUB`` tokens, which is what the
windowed (Omega) case still uses; tested equal to the recurrent path.
"""

from __future__ import annotations

import dataclasses

import torch

from ..kernels.chunk_end_update import chunk_end_update
from ..kernels.dual_read import dual_read
from ..rule.axes import at_least_fp32
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from .chunk_end import add_piece_decay, end_piece
from .coefficients import chunk_coefficients, fold_chunks, piece_rates, scaled
from .omega_window import with_window
from .tokens import Result, Tokens

SUB = 16  # tokens per sub-chunk: (16 x 16) decay matrices per channel; 8 and 32 ran slower, timed by hand


def supports(rule: MemoryRule) -> bool:
    """Channel-wise decays without an Omega window (whose band spans sub-chunks)."""
    return rule.channelwise_rows and rule.window == 1


def sub_chunked(
    rule: MemoryRule,
    tokens: Tokens,
    state: MemoryState,
    chunk_size: int,
    reads: str = "token",
) -> Result:
    """A piece of m * SUB tokens inside one chunk: q, k, v (B, H, m * SUB, d); ``reads =
    "chunk"``: every token at the chunk-start weights."""
    q, k, v, gates = tokens
    state = dataclasses.replace(state)
    retention = rule.retention
    length = q.shape[2]
    subs = length // SUB
    assert subs * SUB == length, "a whole number of sub-chunks"

    rates = piece_rates(rule, gates, q)  # (B, H, T[, C])
    theta = rates.theta
    cum = torch.cumsum(at_least_fp32(rates.log_alpha), dim=2)  # since the piece start

    keys, values, source_gates, _ = with_window(rule, state, k, v, gates)
    weight_scale = None
    if retention.gradient_at_decayed:  # at diag(alpha since the chunk start) W_start
        weight_scale = torch.exp(state.log_decay.unsqueeze(2) + cum)
    out_weight = rule.source_weights(theta, source_gates)
    factors = rule.factors(state.start, keys, values, source_gates, weight_scale, out_weight)
    ((name, (h, delta)),) = factors.items()  # a matrix memory: one map

    c = chunk_coefficients(  # of the m sub-chunks at once: (B, H, m, C, SUB[, SUB])
        fold_chunks(rates.log_alpha, subs),
        fold_chunks(rates.log_eta, subs) if rates.log_eta is not None else None,
        fold_chunks(rates.theta_rows, subs),
        None,
    )
    scale = retention.lr_scale(state.extra, name)
    coef = scaled(c.coef, scale)
    momentum = c.carry is not None

    # the state at each sub-chunk start, carried by the sub-chunks' (d_v x d) updates
    h_sub, delta_sub = fold_chunks(h, subs), fold_chunks(delta, subs)
    state_dtype = torch.promote_types(state.weights[name].dtype, torch.float32)
    w = state.weights[name].to(state_dtype)
    s = state.momentum[name].to(state_dtype) if momentum else None
    end_beta = c.beta[..., -1:].to(state_dtype)  # (B, H, m, C, 1)
    end_carry = c.carry[..., -1:].to(state_dtype) if momentum else None
    end_eta = torch.exp(c.cum_eta[..., -1:]).to(state_dtype) if momentum else None
    row_w = coef[..., -1, :]
    row_s = scaled(c.momentum_coef[..., -1, :], scale) if momentum else None
    # unbound once: indexing sub-chunk b in the loop would make backward zero-fill a
    # full-size gradient per sub-chunk and input
    unset = [None] * subs
    per_sub = zip(
        delta_sub.unbind(2),
        h_sub.to(delta.dtype).unbind(2),
        row_w.to(delta.dtype).unbind(2),
        row_s.to(delta.dtype).unbind(2) if momentum else unset,
        end_beta.unbind(2),
        end_carry.unbind(2) if momentum else unset,
        end_eta.unbind(2) if momentum else unset,
        strict=True,
    )
    starts_w, starts_s = [], []
    for delta_b, h_b, row_w_b, row_s_b, beta_b, carry_b, eta_b in per_sub:
        starts_w.append(w)
        starts_s.append(s)
        w, s = chunk_end_update(delta_b, h_b, row_w_b, row_s_b, beta_b, carry_b, eta_b, w, s)

    def read(x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = dual_read(
            fold_chunks(x, subs),
            h_sub.to(dtype),
            delta_sub.to(dtype),
            coef.to(dtype),
            c.beta.transpose(-1, -2).to(dtype),
            c.carry.transpose(-1, -2).to(dtype) if momentum else None,
            torch.stack(starts_w, dim=2).to(dtype),
            torch.stack(starts_s, dim=2).to(dtype) if momentum else None,
        )
        return y.flatten(2, 3)

    y = rule.read(state.start, q) if reads == "chunk" else rule.arch(q, lambda _, x: read(x))

    add_piece_decay(rule, state, gates, cum)  # the piece as a whole, since the chunk start
    state.weights = {name: w}
    if momentum:
        state.momentum = {name: s}
    state.offset += length
    return end_piece(rule, state, q, y, chunk_size, reads)
