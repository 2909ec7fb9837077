"""The functional memory op: outputs and final state from given q, k, v and gates."""

from __future__ import annotations

import torch

from ..rule.axes import Gates
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from . import fla_delta
from .chunked import chunked
from .chunked_per_token import INNER_STEPS, chunked_per_token, per_token_problem
from .op_inputs import check_op_inputs
from .recurrent import recurrent

PATHS = ("chunked", "recurrent")


def check_path_and_chunk(path: str, chunk_size: int, inner_steps: str = "mini_batch") -> None:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if inner_steps not in INNER_STEPS:
        raise ValueError(f"inner_steps must be one of {INNER_STEPS}, got {inner_steps!r}")


def inner_steps_problem(rule: MemoryRule, chunk_size: int, inner_steps: str) -> str | None:
    """Why ``rule`` cannot run ``inner_steps`` at ``chunk_size`` (None: it can).

    Per-token steps at chunk 1 are the mini-batch steps at chunk 1, so every rule has them
    there; at larger chunks only rules with an exact chunk-parallel form do."""
    if inner_steps != "per_token" or chunk_size == 1:
        return None
    problem = per_token_problem(rule.arch, rule.bias, rule.retention, rule.algorithm)
    if problem is None:
        return None
    return f"'per_token' has no exact chunk-parallel form at chunk_size {chunk_size}: {problem} (use chunk_size = 1 or inner_steps = 'mini_batch')"


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
    inner_steps: str = "mini_batch",
    kernel: str = "auto",
) -> tuple[torch.Tensor, MemoryState]:
    """Run a Miras memory over a sequence.

    Args:
        rule: the memory's four parts (see :func:`miraslab.memory.rule.build.build_rule`).
        q, k: (batch, heads, seq, d_k) queries and keys, feature map already applied.
        v: (batch, heads, seq, d_v) values.
        gates: {name: (batch, heads, seq) or (batch, heads, seq, d_v)}, as the rule's
            ``gate_defs()`` describe (log values for ``log_sigmoid`` gates).
        state: where to continue from; ``None`` starts at the learned W_init.
        chunk_size: tokens per mini-batch step (``inner_steps = "mini_batch"``), or per
            chunk of the chunk-parallel per-token form.
        path: ``"chunked"`` (training) or ``"recurrent"`` (oracle, decoding).
        compile_chunks: run the chunked path's per-chunk step through ``torch.compile``,
            compiled once per configuration and reused for every chunk and length (the
            general path: deep memories, Omega windows, channel-wise decays; the batched
            matrix-memory pass stays eager).  Falls back to eager, with a warning, where
            compiling fails.  Not used by the per-token chunked path.
        inner_steps: ``"mini_batch"``: every gradient of a chunk at the chunk-start state
            (Titans eq. 16-18); ``"per_token"``: each token's at the state the previous token
            left (DeltaNet, Gated DeltaNet), the same at any chunk size: the recurrent path
            then steps chunks of one token, the chunked path runs
            ``paths.chunked_per_token`` (or, for a rule without that form, needs chunk 1).
        kernel: who runs per-token steps of the delta-rule family (``paths.fla_delta``):
            ``"auto"`` flash-linear-attention's kernels on CUDA where installed, else ours;
            ``"fla"`` FLA or a ValueError; ``"native"`` always ours.

    Returns:
        outputs (batch, heads, seq, d_v) and the state after the last token.
    """
    check_path_and_chunk(path, chunk_size, inner_steps)
    if (problem := inner_steps_problem(rule, chunk_size, inner_steps)) is not None:
        raise ValueError(f"memory_op: inner_steps {problem}")
    check_op_inputs(rule, q, k, v, gates, state)
    if state is None:
        state = rule.initial_state(q.shape[0])
    if q.shape[2] == 0:
        return q.new_zeros(*q.shape[:3], v.shape[-1]), state
    per_token = inner_steps == "per_token"
    if per_token and (found := fla_delta.choose(kernel, rule, q, state, path)) is not None:
        return fla_delta.fla_per_token(found, rule, q, k, v, gates, state, fla_delta.decoding(path, q))
    if per_token and (path == "recurrent" or chunk_size == 1):  # per-token steps: chunks of one token
        chunk_size = 1
    if path == "recurrent":
        return recurrent(rule, q, k, v, gates, state, chunk_size)
    # the chunked path batches matmuls over (batch, heads, chunks): with a strided layout
    # (heads split off the feature dimension) every one of them would first copy its operands
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    gates = {name: g.contiguous() for name, g in gates.items()}
    if per_token and chunk_size > 1:
        return chunked_per_token(rule, q, k, v, gates, state, chunk_size)
    return chunked(rule, q, k, v, gates, state, chunk_size, compile_chunks)
