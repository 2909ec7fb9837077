"""Packed documents through the per-token chunked path (``paths.per_token_documents``): every
document's reads equal its reads run alone through the recurrent path, float64, 1e-10 of the
scale; with a carried state, each row's leading document continues it and the state handed on
is the recurrent path's after the row's last document; gradients reach every input; the
layout pads each document to the chunk, not to the longest document."""

from __future__ import annotations

import itertools

import pytest
import torch
from memory_cases import make_rule, random_inputs
from tolerance import assert_close_to_scale

from miraslab.memory.paths.memory_op import memory_op
from miraslab.memory.paths.per_token_documents import document_layout, per_token_documents

CASES = {
    "delta": ("l2", "none", "gd", {}),
    "gated-delta": ("l2", "decay", "gd", {"retention": {"gradient_at": "decayed"}}),
    "decay-previous-momentum": ("l2", "decay", "momentum", {}),
    "dot": ("dot", "decay", "gd", {}),
}
SEQ, CHUNK = 30, 4


def starts_of(seq: int) -> torch.Tensor:
    """Two rows: documents of varied lengths (1 token included), the first row opening mid-document."""
    doc_start = torch.zeros(2, seq, dtype=torch.bool)
    doc_start[0, [3, 4, 11, 20]] = True
    doc_start[1, [0, 9, 10, 29]] = True
    return doc_start


def alone(rule, q, k, v, gates, doc_start) -> torch.Tensor:
    """Each document run by itself through the recurrent path from the initial state."""
    out = torch.empty(*q.shape[:3], v.shape[-1], dtype=q.dtype)
    for row in range(q.shape[0]):
        cuts = [0, *doc_start[row].nonzero().flatten().tolist(), q.shape[2]]
        for start, end in itertools.pairwise(cuts):
            if start == end:
                continue
            piece = (slice(row, row + 1), slice(None), slice(start, end))
            y, _ = memory_op(
                rule,
                q[piece],
                k[piece],
                v[piece],
                {n: g[piece] for n, g in gates.items()},
                path="recurrent",
                inner_steps="per_token",
            )
            out[piece] = y
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_each_packed_document_reads_as_if_alone(name):
    bias, retention, algorithm, options = CASES[name]
    options = {"memory": {"init": "normal"}, **options}  # a non-zero W_init: the restart matters
    rule = make_rule("linear", bias, retention, algorithm, d=8, options=options)
    q, k, v, gates, _ = random_inputs(rule, seq=SEQ, d=8)
    doc_start = starts_of(SEQ)
    got = per_token_documents(rule, q, k, v, gates, doc_start, CHUNK)
    assert_close_to_scale(got, alone(rule, q, k, v, gates, doc_start), 1e-10, f"{name} documents")


def recurrent(rule, q, k, v, gates, piece, state=None):
    """Reads and state of one piece (row, heads, tokens) through the recurrent path."""
    return memory_op(
        rule,
        q[piece],
        k[piece],
        v[piece],
        {n: g[piece] for n, g in gates.items()},
        state,
        path="recurrent",
        inner_steps="per_token",
    )


# and a gate per row of W (the state at each row's last token is then taken per row of W)
CARRIED = [(name, ()) for name in CASES] + [("decay-previous-momentum", ("lr", "decay", "momentum"))]


@pytest.mark.parametrize(("name", "channelwise"), CARRIED)
def test_a_carried_state_continues_each_rows_leading_document_only(name, channelwise):
    """Row 0 opens mid-document: its leading document continues the carried state; row 1 opens
    with a marked start: it ignores it.  The state handed on is each row's after its last
    document, with momentum too (trailing pads on the chunk grid are no identity steps)."""
    bias, retention, algorithm, options = CASES[name]
    rule = make_rule(
        "linear",
        bias,
        retention,
        algorithm,
        d=8,
        options={"memory": {"init": "normal"}, **options},
        channelwise=channelwise,
    )
    q, k, v, gates, _ = random_inputs(rule, seq=SEQ, d=8)
    before = random_inputs(rule, seq=7, d=8, seed=1)[:4]
    _, carried = recurrent(rule, *before, (slice(None), slice(None), slice(None)))
    doc_start = starts_of(SEQ)
    doc_start[0, 20] = False  # row 0's last document ends off the chunk grid: 11 tokens from 11
    got, state = per_token_documents(rule, q, k, v, gates, doc_start, CHUNK, return_state=True, state=carried)
    expected = torch.empty_like(got)
    for row in range(2):
        cuts = [0, *doc_start[row].nonzero().flatten().tolist(), SEQ]
        for start, end in itertools.pairwise(cuts):
            if start == end:
                continue
            piece = (slice(row, row + 1), slice(None), slice(start, end))
            leading = start == 0 and not doc_start[row, 0]
            row_state = carried.map(lambda t, row=row: t[row : row + 1]) if leading else None
            expected[piece], end_state = recurrent(rule, q, k, v, gates, piece, row_state)
        assert_close_to_scale(
            state.weights["w"][row], end_state.weights["w"][0], 1e-10, f"{name} W, row {row}"
        )
        if state.momentum is not None:
            assert_close_to_scale(
                state.momentum["w"][row], end_state.momentum["w"][0], 1e-10, f"{name} S, row {row}"
            )
    assert_close_to_scale(got, expected, 1e-10, f"{name} carried documents")


def test_gradients_reach_queries_keys_values_and_gates():
    rule = make_rule("linear", "l2", "decay", "gd", d=8, options={"retention": {"gradient_at": "decayed"}})
    q, k, v, gates, projections = random_inputs(rule, seq=SEQ, d=8, requires_grad=True)
    per_token_documents(rule, q, k, v, gates, starts_of(SEQ), CHUNK).pow(2).sum().backward()
    leaves = [q, k, v, *projections.parameters()]
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in leaves)


def test_each_document_is_padded_to_the_chunk_not_to_the_longest():
    layout = document_layout(starts_of(SEQ), CHUNK)
    # row 0: documents of 3, 1, 7, 9, 10 tokens -> 4 + 4 + 8 + 12 + 12 = 40 laid-out positions
    assert layout.length == 40 and layout.index[0, :5].tolist() == [0, 1, 2, 4, 8]
    assert layout.restart[0].tolist() == [True, True, True, False, True, False, False, True, False, False]


@pytest.mark.compile
@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("name", ["gated-delta", "decay-previous-momentum"])
def test_restarts_in_the_compiled_chunk_scan_equal_the_eager_loop(name, carried):
    """Under torch.compile the chunk recurrence runs through ``scan`` (one graph for every
    length), restarts included (``carried``: from a carried state, restarting to the initial
    one); traced with ``aot_eager`` (no inductor: seconds), float64, its reads and final state
    equal the eager Python loop's to 1e-10 of the scale."""
    from miraslab.memory.paths.chunked_per_token import chunked_per_token
    from miraslab.memory.paths.tokens import Tokens

    bias, retention, algorithm, options = CASES[name]
    rule = make_rule(
        "linear", bias, retention, algorithm, d=8, options={"memory": {"init": "normal"}, **options}
    )
    q, k, v, gates, _ = random_inputs(rule, seq=14, d=8)
    restart = torch.tensor([[False, True, False, True], [True, False, True, False]])
    initial = rule.initial_state(q.shape[0])
    start = initial.map(lambda t: t + 0.1 * torch.randn_like(t)) if carried else initial

    def run(q, k, v, gates):
        tokens = Tokens(q.contiguous(), k.contiguous(), v.contiguous(), gates)
        y, state = chunked_per_token(rule, tokens, start, CHUNK, restart, reset=initial)
        return y, state.weights["w"]

    torch._dynamo.reset()
    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)(q, k, v, gates)
    for got, expected, what in zip(compiled, run(q, k, v, gates), ["reads", "final W"], strict=True):
        assert_close_to_scale(got, expected, 1e-10, f"{name}: {what}")
