"""The functional memory op: outputs and final state from given q, k, v and gates."""

from __future__ import annotations

import torch

from ..rule.axes import Gates
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from ..spec import check_run_options
from . import fla_delta
from .chunked import chunked
from .chunked_per_token import chunked_per_token
from .op_inputs import check_op_inputs
from .recurrent import recurrent
from .tokens import Tokens


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
    reads: str = "token",
) -> tuple[torch.Tensor, MemoryState]:
    """Run a Miras memory over a sequence.

    Args:
        rule: the memory's four parts (:func:`miraslab.memory.rule.build.build_rule`).
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
            ``paths.chunked_per_token``, which refuses a rule without that form (chunk 1
            has it for every rule).
        kernel: who runs per-token steps of the delta-rule family (``paths.fla_delta``):
            ``"auto"`` flash-linear-attention's kernels on CUDA where installed, else ours;
            ``"fla"`` FLA or a ValueError; ``"native"`` always ours.
        reads: ``"token"``: token t reads M_t, the weights after its chunk's updates up to
            its own; ``"chunk"``: every token of a chunk reads the chunk-start weights (as
            titans-pytorch does: other semantics, no intra-chunk term).  The writes are the
            same.  Mini-batch steps only.

    Returns:
        outputs (batch, heads, seq, d_v) and the state after the last token.
    """
    check_run_options(path, chunk_size, inner_steps, reads)
    check_op_inputs(rule, q, k, v, gates, state)
    if state is None:
        state = rule.initial_state(q.shape[0])
    if q.shape[2] == 0:
        return q.new_zeros(*q.shape[:3], v.shape[-1]), state
    per_token = inner_steps == "per_token"
    if per_token and (found := fla_delta.choose(kernel, rule, q, state, path)) is not None:
        return fla_delta.fla_per_token(
            found, rule, Tokens(q, k, v, gates), state, fla_delta.decoding(path, q)
        )
    if per_token and (path == "recurrent" or chunk_size == 1):  # per-token steps: chunks of one token
        chunk_size = 1
    if path == "recurrent":
        return recurrent(rule, Tokens(q, k, v, gates), state, chunk_size, reads)
    # the chunked path batches matmuls over (batch, heads, chunks): with a strided layout
    # (heads split off the feature dimension) every one of them would first copy its operands
    tokens = Tokens(
        q.contiguous(), k.contiguous(), v.contiguous(), {n: g.contiguous() for n, g in gates.items()}
    )
    if per_token and chunk_size > 1:
        return chunked_per_token(rule, tokens, state, chunk_size)
    return chunked(rule, tokens, state, chunk_size, compile_chunks, reads)
