"""The chunked path: training, with no Python loop over tokens.

Inside a chunk every gradient is taken at the chunk-start weights W_0, so for each
linear map of the memory the weights after token i are

    W_i = beta_i W_start + sigma_i S_start + sum_j K[i, j] delta_j h_j^T

with beta_i = exp(A_i) (A the cumulative log decay), sigma_i the momentum carry, and
K = -Dalpha @ Deta @ diag(theta) @ Gamma: decay (Dalpha), momentum (Deta) and the Omega
window (Gamma, a band) are small (L x L) matrices built from cumulative sums.  A read
``W_i x_i`` is then ``beta_i W_start x_i + sigma_i S_start x_i + sum_j K[i, j] (h_j . x_i)
delta_j`` (the "dual form"), computed for all i with matmuls.  Only the chunk-end state is
materialised, and the non-linear steps are applied to it.

With ``reads = "chunk"`` (titans-pytorch's semantics) every token of a chunk reads the
chunk-start weights instead, ``y_i = M_{W_start}(q_i)``: no dual form, only the chunk ends.
"""

from __future__ import annotations

import dataclasses

import torch

from ..kernels.batched import outer_sum
from ..kernels.chunk_end_update import chunk_end_update
from ..kernels.decay_matrix import decay_matrix
from ..kernels.dual_read import dual_read
from ..kernels.read_and_end import read_and_end
from ..rule.axes import Gates, at_least_fp32
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from . import chunked_affine, chunked_channelwise
from .chunk_end import add_piece_decay, end_piece
from .chunked_channelwise import SUB
from .coefficients import ChunkCoefficients, piece_coefficients, scaled
from .compiled import chunk_major, like_chunk_end, run_compiled
from .general import general_chunked
from .omega_window import keep_window, window_band, with_window
from .tokens import Result, Tokens


def chunked(
    rule: MemoryRule,
    tokens: Tokens,
    state: MemoryState,
    chunk_size: int,
    compile_chunks: bool = False,
    reads: str = "token",
) -> Result:
    """q, k, v (B, H, T, d): one pass per chunk (the first may finish a chunk the state began).

    ``compile_chunks`` runs the per-chunk step of whole chunks (``_piece``, or the
    channel-wise sub-chunked step) through ``torch.compile`` (see ``paths.compiled``); the
    batched matrix-memory pass stays eager.
    """
    if rule.algorithm.stateful:  # an optimizer with state of its own: no factored form (paths.general)
        return general_chunked(rule, tokens, state, chunk_size, reads)
    q, k, v, gates = tokens
    state = dataclasses.replace(state)
    total = q.shape[2]
    lengths = [min(chunk_size - state.offset, total)]
    while sum(lengths) < total:
        lengths.append(min(chunk_size, total - sum(lengths)))
    batched = chunked_affine.supports(rule)
    if batched:  # whole chunks at a chunk boundary go in one batch
        lengths = _join_whole_chunks(lengths, chunk_size, state.offset)
    sub_chunked = chunked_channelwise.supports(rule)
    if rule.channelwise_rows:  # an L x L decay matrix per value channel: sub-chunks of SUB tokens
        lengths = [part for length in lengths for part in _split(length, SUB, whole=sub_chunked)]
    # the pieces that are whole chunks, each through one step (and compiled: two or more)
    whole = _whole_run(lengths, chunk_size) if per_chunk_step(rule) else range(0)
    compiled = whole if compile_chunks and len(whole) > 1 else range(0)
    names = list(gates)
    pieces = zip(*_split_pieces([q, k, v, *gates.values()], lengths, compiled), strict=True)
    precomputed = _whole_chunk_coefficients(rule, q, gates, lengths, whole, contiguous=bool(compiled))
    outputs = []
    for index, (q_piece, k_piece, v_piece, *gate_pieces) in enumerate(pieces):
        piece_gates = dict(zip(names, gate_pieces, strict=True))
        if batched and q_piece.shape[2] > chunk_size:
            y, state = chunked_affine.whole_chunks(
                rule, Tokens(q_piece, k_piece, v_piece, piece_gates), state, chunk_size, reads=reads
            )
            outputs.append(y)
            continue
        if sub_chunked and q_piece.shape[2] % SUB == 0:
            step, extra = chunked_channelwise.sub_chunked, ()
        else:
            step, extra = _piece, (precomputed.get(index),)
        if compiled and index == compiled.start:  # its state laid out as later chunks get theirs
            step_inputs = [q_piece, k_piece, v_piece, *gate_pieces, *rule.parameters()]
            state = like_chunk_end(state, step_inputs)
        args = (rule, Tokens(q_piece, k_piece, v_piece, piece_gates), state, chunk_size, *extra, reads)
        y, state = step(*args) if index not in compiled else run_compiled(step, *args)
        outputs.append(y)
    return torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0], state


def per_chunk_step(rule: MemoryRule) -> bool:
    """Whether whole chunks run one at a time (what ``compile_chunks`` compiles): through
    ``_piece``, or in channel-wise sub-chunks; not the batched matrix-memory pass, nor
    channel-wise decays under an Omega window (pieces of SUB tokens)."""
    return not chunked_affine.supports(rule) and (
        not rule.channelwise_rows or chunked_channelwise.supports(rule)
    )


def _whole_chunk_coefficients(
    rule: MemoryRule,
    q: torch.Tensor,
    gates: Gates,
    lengths: list[int],
    whole: range,
    contiguous: bool = False,
) -> dict[int, tuple[torch.Tensor, ChunkCoefficients]]:
    """The coefficients of the ``whole`` chunks' pieces at once, by piece index.

    They depend on the gates alone, not on the state, so the per-chunk loop then does only
    the state-dependent work.  Not with an Omega window, whose band depends on how many
    tokens the state buffers, nor with channel-wise decays: chunks of a multiple of SUB
    tokens run in ``chunked_channelwise``, which computes its sub-chunks' coefficients
    itself, and the others compute theirs piece by piece.
    """
    count = len(whole)
    if rule.window > 1 or rule.channelwise_rows or count < 2:
        return {}
    start = sum(lengths[: whole.start])
    end = start + count * lengths[whole.start]
    theta, coefficients = piece_coefficients(
        rule, {n: g[:, :, start:end] for n, g in gates.items()}, q[:, :, start:end], None, chunks=count
    )
    # chunk-major copies for the compiled step, views otherwise
    cut = chunk_major if contiguous else (lambda x: x.unbind(2))
    thetas = cut(theta)
    return {whole.start + c: (thetas[c], part) for c, part in enumerate(coefficients.split(cut))}


def _whole_run(lengths: list[int], chunk_size: int) -> range:
    """The indices of the whole chunks' pieces: those of ``chunk_size`` tokens, one run of
    them between the pieces of a partial first chunk and of a partial last one."""
    whole = [i for i, length in enumerate(lengths) if length == chunk_size]
    if not whole:
        return range(0)
    run = range(whole[0], whole[-1] + 1)
    assert len(run) == len(whole), "whole chunks are consecutive"
    return run


def _split_pieces(tensors: list[torch.Tensor], lengths: list[int], run: range) -> list[list[torch.Tensor]]:
    """Each (B, H, T, ...) tensor cut into the pieces (dim 2), the ``run`` of whole chunks chunk-major.

    Split once: slicing each piece separately would make backward zero-fill a full-length
    gradient per piece (quadratic in the sequence length).
    """
    if not run:
        return [list(t.split(lengths, dim=2)) for t in tensors]
    before, inside, after = lengths[: run.start], lengths[run.start : run.stop], lengths[run.stop :]
    out = []
    for t in tensors:
        head, middle, tail = t.split([sum(before), sum(inside), sum(after)], dim=2)
        chunks = chunk_major(middle.unflatten(2, (len(inside), inside[0])))
        out.append(
            [
                *(head.split(before, dim=2) if before else ()),
                *chunks,
                *(tail.split(after, dim=2) if after else ()),
            ]
        )
    return out


def _split(length: int, unit: int, whole: bool) -> list[int]:
    """``length`` tokens as pieces of ``unit`` (``whole``: one piece of all of them) and a shorter last one."""
    pieces = [length - length % unit] if whole else [unit] * (length // unit)
    return [p for p in pieces if p] + ([length % unit] if length % unit else [])


def _join_whole_chunks(lengths: list[int], chunk_size: int, offset: int) -> list[int]:
    """One length for the run of whole chunks after a partial first piece and before a partial last one."""
    first = 1 if offset else 0
    last = len(lengths) - (1 if lengths[-1] < chunk_size else 0)
    if last - first < 2:
        return lengths
    return [*lengths[:first], sum(lengths[first:last]), *lengths[last:]]


def _piece(
    rule: MemoryRule,
    tokens: Tokens,
    state: MemoryState,
    chunk_size: int,
    precomputed: tuple[torch.Tensor, ChunkCoefficients] | None = None,
    reads: str = "token",
) -> Result:
    q, k, v, gates = tokens
    retention = rule.retention
    batch, heads, length = q.shape[:3]

    keys, values, source_gates, buffered = with_window(rule, state, k, v, gates)
    if precomputed is not None:
        theta, coefficients = precomputed
    else:
        dtype = torch.promote_types(rule.algorithm.lr(gates).dtype, torch.float32)
        band = window_band(rule, source_gates, buffered, length, dtype, q.device) if rule.window > 1 else None
        theta, coefficients = piece_coefficients(rule, gates, q, band)
    cum_alpha, beta, coef = (
        coefficients.cum_alpha,
        coefficients.beta,
        coefficients.coef,
    )  # cum_alpha: A_i, relative to the piece start
    carry, momentum_coef, cum_eta = coefficients.carry, coefficients.momentum_coef, coefficients.cum_eta

    channels = coefficients.channels  # decays per value channel: (B, H, C, L) and (B, H, C, L, L)
    weight_scale = None
    if retention.gradient_at_decayed:  # window 1: sources are this piece's tokens
        start_log = (
            state.log_decay.unsqueeze(-1) if channels and not rule.channelwise_decay else state.log_decay
        )
        weight_scale = torch.exp(start_log.unsqueeze(-1) + cum_alpha)
        weight_scale = weight_scale.transpose(-1, -2) if channels else weight_scale  # (B, H, L[, C])
    out_weight = rule.source_weights(theta, source_gates)  # channel-wise theta: window 1, sources = tokens
    factors = rule.factors(state.start, keys, values, source_gates, weight_scale, out_weight)

    start_w, start_s = state.weights, state.momentum

    def per_token(x: torch.Tensor) -> torch.Tensor:  # (B, H, L) -> (B, H, L, 1); (B, H, C, L) -> (B, H, L, C)
        return x.transpose(-1, -2) if channels else x.unsqueeze(-1)

    read_dtype = q.dtype  # the per-token coefficients, cast once for every read
    coef_read, beta_read = coef.to(read_dtype), per_token(beta).to(read_dtype)
    carry_read = per_token(carry).to(read_dtype) if carry is not None else None

    # chunk end: W' = beta_L W + sigma_L S + sum_j K[L, j] g_j and S' = eta_L S + sum_j
    # momentum_coef[L, j] g_j
    def last_row(matrix: torch.Tensor) -> torch.Tensor:
        row = matrix[..., -1, :]
        return row.expand(batch, heads, -1) if row.dim() == 1 else row

    def end_value(x: torch.Tensor) -> torch.Tensor:  # the last token's, to scale (B, H, d_out, d_in)
        return x[..., -1, None] if channels else x[..., -1, None, None]

    eta_end = end_value(torch.exp(cum_eta)) if carry is not None else None
    row_w = last_row(coef)
    row_s = last_row(momentum_coef) if carry is not None else None
    ends: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # chunk ends made with a read

    def end_inputs(name: str, dtype: torch.dtype) -> list[torch.Tensor | None]:
        """chunk_end_update's arguments after delta and h: rows in ``dtype``, the rest in the state's."""
        scale = retention.lr_scale(state.extra, name)
        state_dtype = torch.promote_types(start_w[name].dtype, torch.float32)
        momentum = carry is not None
        return [
            scaled(row_w, scale).to(dtype),
            scaled(row_s, scale).to(dtype) if momentum else None,
            end_value(beta).to(state_dtype),
            end_value(carry).to(state_dtype) if momentum else None,
            eta_end.to(state_dtype) if momentum else None,
            start_w[name].to(state_dtype),
            start_s[name].to(state_dtype) if momentum else None,
        ]

    def fuses(name: str, x: torch.Tensor) -> bool:
        """Whether this read also makes the map's chunk end (``read_and_end``): the first read
        of the map, per-head rows, one dtype throughout; eagerly (dynamo, torch 2.13, failed
        on its None output without momentum, and inductor fuses the passes it saves anyway)."""
        if torch.compiler.is_compiling():
            return False
        h, delta = factors[name]
        states = [start_w[name], *([start_s[name]] if carry is not None else [])]
        dtypes = {x.dtype, h.dtype, delta.dtype, *(t.dtype for t in states)}
        return name not in ends and not channels and dtypes == {torch.promote_types(x.dtype, torch.float32)}

    def linear(name: str, x: torch.Tensor) -> torch.Tensor:
        """W_i x_i for every token: K o (x h^T) @ delta + beta x W^T + sigma x S^T."""
        h, delta = factors[name]
        dtype = x.dtype
        read_coef = scaled(coef_read, retention.lr_scale(state.extra, name)).to(dtype)
        if fuses(name, x):
            *rows_and_ends, w, s = end_inputs(name, dtype)
            y, w_end, s_end = read_and_end(
                x,
                h,
                delta,
                read_coef,
                beta_read.to(dtype),
                carry_read.to(dtype) if carry_read is not None else None,
                w,
                s,
                *rows_and_ends,
            )
            ends[name] = (w_end, s_end)
            return y
        return dual_read(
            x,
            h.to(dtype),
            delta.to(dtype),
            read_coef,
            beta_read.to(dtype),
            carry_read.to(dtype) if carry_read is not None else None,
            start_w[name].to(dtype),
            start_s[name].to(dtype) if carry_read is not None else None,
        )

    # reads "chunk": every token at the chunk-start weights (the dual form's beta, sigma and K
    # terms dropped); the chunk ends below are made by chunk_end_update alone
    y = rule.read(state.start, q) if reads == "chunk" else rule.apply_arch(q, linear)

    new_weights, new_momentum, new_decayed = {}, {}, {}
    for name, (h, delta) in factors.items():
        w, s_next = (
            ends[name]
            if name in ends
            else chunk_end_update(delta, h.to(delta.dtype), *end_inputs(name, delta.dtype))
        )
        new_weights[name] = w
        if s_next is not None:
            new_momentum[name] = s_next
    if retention.needs_decayed_update:
        aux_cum = torch.cumsum(at_least_fp32(retention.aux_log_alpha(gates)), dim=-1)
        aux_row = decay_matrix(aux_cum)[..., -1, :]  # exp(A_L - A_s)
        aux_last = coefficients.times_theta_band(aux_row.unsqueeze(-2), negate=True).squeeze(-2)
        aux_last = aux_last.expand(batch, heads, -1) if aux_last.dim() == 1 else aux_last
        for name, (h, delta) in factors.items():
            new_decayed[name] = torch.exp(aux_cum[..., -1])[..., None, None] * state.decayed_update[
                name
            ] + outer_sum(aux_last, delta, h)
        state.decayed_update = new_decayed
        state.aux_log_decay = state.aux_log_decay + aux_cum[..., -1]

    state.weights = new_weights
    if carry is not None:
        state.momentum = new_momentum
    cum = cum_alpha  # per token: (B, H, L), or (B, H, L, C) with a channel-wise decay
    if channels:  # channels first; a decay per head has a channel dimension of 1 here
        cum = cum.transpose(-1, -2) if rule.channelwise_decay else cum[..., 0, :]
    add_piece_decay(rule, state, gates, cum)
    state.offset += length
    keep_window(rule, state, keys, values, source_gates)
    return end_piece(rule, state, q, y, chunk_size, reads)
