"""The chunk step under torch.compile: compiled once, then run for every whole chunk.

Compiling a whole layer unrolls its Python loop over chunks, so the graph grows with the
sequence (a deep memory at seq 2048 took 199 s to compile here) and every new length
compiles again.  The general chunked path's per-chunk step has the same shapes for every
whole chunk, so it is compiled once per configuration (rule, dtype, grad mode, autocast)
and reused by every chunk, every layer of that configuration and every sequence length.

Dynamo guards on strides too: a chunk sliced out of a (B, H, T, d) tensor has strides that
depend on T, and would compile again for each length.  The whole chunks' inputs are
therefore laid out chunk-major, (n, B, H, L, ...) contiguous, one copy per call.

If compiling fails (no C++ toolchain, an op inductor cannot lower), the step runs eagerly
from then on, after one warning.  Inside a whole-model ``torch.compile`` the step is
traced inline with the rest.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..rule.state import MemoryState

# one graph per configuration; a model may mix several memories, each under grad and
# no-grad, fp32 and autocast: well past dynamo's default of 8 entries per function
RECOMPILE_LIMIT = 64

_compiled: dict[Callable, Callable] = {}
_failed: set[Callable] = set()


def _compile_error(exc: BaseException) -> bool:
    """An error of dynamo or inductor (tracing, lowering, the C++ compiler), not of the step."""
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


def run_compiled(step: Callable[..., Any], *args: Any) -> Any:
    """``step(*args)`` through ``torch.compile(step)`` (static shapes), compiled on first use."""
    if torch.compiler.is_compiling() or step in _failed:
        return step(*args)
    from torch._dynamo import config as dynamo  # here: importing dynamo takes about a second

    compiled = _compiled.get(step)
    if compiled is None:
        compiled = _compiled[step] = torch.compile(step, dynamic=False)
    try:
        with dynamo.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled(*args)
    except Exception as exc:
        if not _compile_error(exc):
            raise
        _failed.add(step)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warnings.warn(
            f"compile_chunks: torch.compile of the memory's chunk step failed "
            f"({type(exc).__name__}: {first_line}); running it eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
        return step(*args)


def like_chunk_end(state: MemoryState, inputs: Sequence[torch.Tensor]) -> MemoryState:
    """``state`` as the compiled step returns it at a chunk end, so the run's first chunk
    takes the graph every later chunk takes instead of compiling a second one.

    Dynamo guards on each input's strides, aliasing and ``requires_grad``.  A call's initial
    state has the learned weights expanded over the batch (stride 0) and, under grad mode,
    a zero momentum that requires no grad; a carried state may have been detached, which
    also makes its chunk-start weights tensors of their own.  Here weights and momentum
    become contiguous, the chunk-start weights the very tensors of the weights (at a chunk
    boundary they are equal: as after every chunk end), and, when the chunk ends will
    require grad (grad mode, and the state or one of the step's ``inputs``, the rule's
    parameters among them, requires it), every one requires grad: one that did not becomes
    a leaf whose gradient nobody reads.
    """
    if torch.compiler.is_compiling():  # traced inline into a whole-model graph: no guards to meet
        return state
    tensors = [*inputs, *state.weights.values(), *(state.momentum or {}).values()]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

    def laid_out(x: torch.Tensor) -> torch.Tensor:
        # a view gets storage of its own, as the step's outputs have
        x = x.contiguous() if x._base is None else x.clone()
        return x.detach().requires_grad_() if grad and not x.requires_grad else x

    assert state.offset == 0, "a whole chunk starts at a chunk boundary"
    weights = {name: laid_out(w) for name, w in state.weights.items()}
    out = dataclasses.replace(state, start=weights, weights=weights)
    if state.momentum is not None:
        out.momentum = {name: laid_out(s) for name, s in state.momentum.items()}
    return out


def chunk_major(x: torch.Tensor, dim: int = 2) -> Sequence[torch.Tensor]:
    """The slices of ``x`` along its chunk dimension ``dim``, each contiguous, with strides
    that do not depend on the number of chunks (one copy of ``x``)."""
    return x.movedim(dim, 0).contiguous().unbind(0)
