"""The functional memory op: outputs and final state from given q, k, v and gates."""

from __future__ import annotations

import torch

from ..rule.axes import Gates
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from .chunked import chunked
from .op_inputs import check_op_inputs
from .recurrent import recurrent

PATHS = ("chunked", "recurrent")


def check_path_and_chunk(path: str, chunk_size: int) -> None:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def memory_op(
    rule: MemoryRule,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    state: MemoryState | None = None,
    chunk_size: int = 64,
    path: str = "chunked",
    compile_chunks: bool = False,
) -> tuple[torch.Tensor, MemoryState]:
    """Run a Miras memory over a sequence.

    Args:
        rule: the memory's four parts (see :func:`miraslab.memory.rule.build.build_rule`).
        q, k: (batch, heads, seq, d_k) queries and keys, feature map already applied.
        v: (batch, heads, seq, d_v) values.
        gates: {name: (batch, heads, seq) or (batch, heads, seq, d_v)}, as the rule's
            ``gate_defs()`` describe (log values for ``log_sigmoid`` gates).
        state: where to continue from; ``None`` starts at the learned W_init.
        chunk_size: tokens per mini-batch step.
        path: ``"chunked"`` (training) or ``"recurrent"`` (oracle, decoding).
        compile_chunks: run the chunked path's per-chunk step through ``torch.compile``,
            compiled once per configuration and reused for every chunk and length (the
            general path: deep memories, Omega windows, channel-wise decays; the batched
            matrix-memory pass stays eager).  Falls back to eager, with a warning, where
            compiling fails.

    Returns:
        outputs (batch, heads, seq, d_v) and the state after the last token.
    """
    check_path_and_chunk(path, chunk_size)
    check_op_inputs(rule, q, k, v, gates, state)
    if state is None:
        state = rule.initial_state(q.shape[0])
    if q.shape[2] == 0:
        return q.new_zeros(*q.shape[:3], v.shape[-1]), state
    if path == "recurrent":
        return recurrent(rule, q, k, v, gates, state, chunk_size)
    # the chunked path batches matmuls over (batch, heads, chunks): with a strided layout
    # (heads split off the feature dimension) every one of them would first copy its operands
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    gates = {name: g.contiguous() for name, g in gates.items()}
    return chunked(rule, q, k, v, gates, state, chunk_size, compile_chunks)
