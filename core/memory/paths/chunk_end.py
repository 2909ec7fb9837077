"""What happens when a chunk ends: the non-linear steps on the materialised state."""

from __future__ import annotations

import torch

from ..rule.axes import ChunkEnd, Gates, at_least_fp32
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState


def close_chunk(rule: MemoryRule, state: MemoryState) -> MemoryState:
    """Apply the retention's and the algorithm's chunk-end steps; start the next chunk."""
    weights, momentum, extra = state.weights, state.momentum, state.extra
    if rule.nonlinear:
        end = ChunkEnd(
            start=state.start,
            weights=weights,
            momentum=momentum,
            log_decay=state.log_decay,
            sums=state.sums,
            extra=extra,
            decayed_update=state.decayed_update,
            aux_log_decay=state.aux_log_decay,
            biases=frozenset(rule.arch.biases.values()),
        )
        weights, momentum, extra = rule.retention.chunk_end(end)
        end.weights, end.momentum, end.extra = weights, momentum, extra
        weights = rule.algorithm.chunk_end(end)
    state.start = state.weights = weights
    state.momentum, state.extra = momentum, extra
    state.offset = 0
    state.log_decay = state.log_decay.new_zeros(state.log_decay.shape)
    state.sums = {n: s.new_zeros(s.shape) for n, s in state.sums.items()}
    if state.decayed_update is not None:
        state.decayed_update = {n: d.new_zeros(d.shape) for n, d in state.decayed_update.items()}
        state.aux_log_decay = state.aux_log_decay.new_zeros(state.aux_log_decay.shape)
    return state


def add_piece_decay(rule: MemoryRule, state: MemoryState, gates: Gates, cum: torch.Tensor) -> None:
    """Carry a piece's decay into the state, and its tokens into the axes' chunk sums, in place.

    cum (B, H, L[, d_v]): the cumulative log alpha since the piece start, one per value
    channel when the decay is channel-wise; gates: the piece's.  Each declared sum then
    decays by exp(A_L) and gains sum_s exp(A_L - A_s) x_s.
    """
    log_end = cum[:, :, -1]  # (B, H[, d_v])
    for name, value in rule.chunk_sums().items():
        x = at_least_fp32(value(gates))  # (B, H, L)
        if cum.dim() == 4:
            x = x.unsqueeze(-1)
        added = (torch.exp(log_end.unsqueeze(2) - cum) * x).sum(2)
        state.sums = {**state.sums, name: torch.exp(log_end) * state.sums[name] + added}
    state.log_decay = state.log_decay + log_end


def end_piece(
    rule: MemoryRule,
    state: MemoryState,
    q: torch.Tensor,
    y: torch.Tensor,
    chunk_size: int,
    reads: str = "token",
) -> tuple[torch.Tensor, MemoryState]:
    """After a chunked piece: when it ends the chunk, close the chunk; the chunk's last token
    then reads the state after the non-linear steps (q, y: the piece's queries and reads),
    unless every token read the chunk-start weights (``reads = "chunk"``)."""
    if state.offset != chunk_size:
        return y, state
    state = close_chunk(rule, state)
    if rule.nonlinear and reads == "token":
        y_last = rule.read(state.weights, q[:, :, -1:])
        y = torch.cat([y[:, :, :-1], y_last.to(y.dtype)], dim=2)
    return y, state
