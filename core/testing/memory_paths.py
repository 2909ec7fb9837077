"""The engine's contract for one memory rule, checked on its two execution paths.

Every check takes a built rule (``RuleCase(...).build()``, float64) and raises ``KitFailure``.
Tolerance: ``PATH_TOLERANCE`` of the reference's largest magnitude (at least 1): the paths differ
only in summation order, so float64 agrees to ~1e-14 and 1e-9 leaves room for long products.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import api
from .failure import KitFailure, expect_close
from .memory_inputs import random_inputs, tokens

PATH_TOLERANCE = 1e-9
SEQ = 12
CHUNKS = (1, 3, 5)  # 1 (the token loop itself), one that divides SEQ, one that does not
SPLIT = 5  # a first call of 5 tokens ends inside a chunk of 3 and of 5


def check_paths_agree(
    rule: Any, what: str = "rule", seq: int = SEQ, chunks=CHUNKS, split: int = SPLIT
) -> None:
    """chunked == recurrent at every chunk size, outputs and final state, in one call and in two
    calls where the second continues the state the first carried (it starts mid-chunk)."""
    q, k, v, gates, _ = random_inputs(rule, seq=seq)
    for chunk in chunks:
        run = {}
        for path in ("chunked", "recurrent"):
            y, state = api.memory_op(rule, q, k, v, gates, chunk_size=chunk, path=path)
            _, carried = api.memory_op(
                rule, *tokens(q, k, v, gates, slice(split)), chunk_size=chunk, path=path
            )
            rest, after = api.memory_op(
                rule, *tokens(q, k, v, gates, slice(split, None)), carried, chunk_size=chunk, path=path
            )
            run[path] = (y, state, rest, after)
        (y_c, s_c, rest_c, after_c), (y_r, s_r, rest_r, after_r) = run["chunked"], run["recurrent"]
        where = f"{what}, chunk {chunk}, seq {seq}"
        expect_close(f"{where}: chunked vs recurrent outputs", y_c, y_r, PATH_TOLERANCE)
        for name in s_r.weights:
            expect_close(
                f"{where}: final weights {name!r}", s_c.weights[name], s_r.weights[name], PATH_TOLERANCE
            )
        expect_close(
            f"{where}: a call continuing a carried {split}-token state, chunked vs recurrent",
            rest_c, rest_r, PATH_TOLERANCE,
        )  # fmt: skip
        expect_close(f"{where}: two calls vs one", rest_r, y_r[:, :, split:], PATH_TOLERANCE)
        for name in after_r.weights:
            expect_close(
                f"{where}: weights {name!r} after two calls",
                after_c.weights[name],
                s_r.weights[name],
                PATH_TOLERANCE,
            )


def check_decode_continues(
    rule: Any, what: str = "rule", seq: int = 10, chunk: int = 4, prefix: int = 5
) -> None:
    """Decoding token by token (recurrent, one token a call) from a chunked state that ends
    mid-chunk reproduces the one-call chunked outputs."""
    q, k, v, gates, _ = random_inputs(rule, seq=seq)
    full, _ = api.memory_op(rule, q, k, v, gates, chunk_size=chunk, path="chunked")
    _, state = api.memory_op(rule, *tokens(q, k, v, gates, slice(prefix)), chunk_size=chunk, path="chunked")
    steps = []
    for t in range(prefix, seq):
        y, state = api.memory_op(
            rule, *tokens(q, k, v, gates, slice(t, t + 1)), state, chunk_size=chunk, path="recurrent"
        )
        steps.append(y)
    expect_close(
        f"{what}: decoding after a chunked {prefix}-token prefix (chunk {chunk}) vs one chunked call",
        torch.cat(steps, dim=2), full[:, :, prefix:], PATH_TOLERANCE,
    )  # fmt: skip


def check_short_sequence(rule: Any, what: str = "rule", seq: int = 3, chunk: int = 8) -> None:
    """A sequence shorter than a chunk: the paths agree and the memory is still written."""
    q, k, v, gates, _ = random_inputs(rule, seq=seq)
    chunked, state = api.memory_op(rule, q, k, v, gates, chunk_size=chunk, path="chunked")
    recurrent, _ = api.memory_op(rule, q, k, v, gates, chunk_size=chunk, path="recurrent")
    expect_close(
        f"{what}: {seq} tokens in a chunk of {chunk}, chunked vs recurrent",
        chunked,
        recurrent,
        PATH_TOLERANCE,
    )
    if state.offset != seq:
        raise KitFailure(
            f"{what}: after {seq} tokens in a chunk of {chunk} the state's offset is {state.offset}"
        )
    initial = rule.initial_state(q.shape[0])
    moved = max(float((state.weights[n] - initial.weights[n]).detach().abs().max()) for n in state.weights)
    if not moved > 1e-6:
        raise KitFailure(f"{what}: {seq} tokens shorter than a chunk of {chunk} left the memory unwritten")


def check_gradients_reach(rule: Any, what: str = "rule", seq: int = 7, chunk: int = 3) -> None:
    """The outer loss reaches q, k, v, every gate projection and every parameter of the rule."""
    q, k, v, gates, gate_module = random_inputs(rule, seq=seq, requires_grad=True)
    rule.zero_grad(set_to_none=True)
    y, state = api.memory_op(rule, q, k, v, gates, chunk_size=chunk, path="chunked")
    (y.pow(2).sum() + sum(w.sum() for w in state.weights.values())).backward()
    named = [*(("gates." + n, p) for n, p in gate_module.named_parameters()), *rule.named_parameters()]
    missing = [n for n, p in named if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    missing += [
        n for n, t in zip("qkv", (q, k, v), strict=True) if t.grad is None or not t.grad.abs().sum() > 0
    ]
    if missing:
        raise KitFailure(f"{what}: the outer loss does not reach {', '.join(missing)}")


def check_finite(rule: Any, what: str = "rule", scale: float = 4.0) -> None:
    """Inputs a few times larger than unit norm keep every output finite on both paths."""
    q, k, v, gates, _ = random_inputs(rule, seq=8, scale=scale)
    for path in ("chunked", "recurrent"):
        y, _ = api.memory_op(rule, q, k, v, gates, chunk_size=4, path=path)
        if not torch.isfinite(y).all():
            raise KitFailure(f"{what}: the {path} path gives non-finite outputs for inputs of scale {scale}")
