"""``[model.memory] reads = "chunk"``: every token of a chunk reads the chunk-start weights
(titans-pytorch's semantics), the writes unchanged.

Tolerances: float64, outputs and states compared with ``max|a - b| <= 1e-9 * max(1, max|b|)``
(the chunked and recurrent paths differ only in summation order, as in test_memory_paths).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import REPO
from memory_cases import make_rule, random_inputs, tokens

import miraslab
from miraslab.errors import RecipeError
from miraslab.memory.paths import chunked_affine
from miraslab.memory.paths.memory_op import memory_op
from miraslab.memory.paths.tokens import Tokens
from miraslab.memory.spec import MemorySpec

TOL = 1e-9

# one rule per way the chunked path runs a chunk: the batched matrix pass (hand-written
# backward; Omega window and decayed gradient point: autograd form), the dual-form piece
# (deep memories; non-linear chunk ends), channel-wise sub-chunks, and the general path
CASES = {
    "linear-l2-decay-momentum": ("linear", "l2", "decay", "momentum", {}),
    "linear-dot-none-gd": ("linear", "dot", "none", "gd", {}),
    "linear-omega-decay-momentum": ("linear", "omega", "decay", "momentum", {}),
    "linear-l2-decay-gd-at-decayed": (
        "linear",
        "l2",
        "decay",
        "gd",
        {"options": {"retention": {"gradient_at": "decayed"}}},
    ),
    "linear-l2-decay-momentum-channelwise": (
        "linear",
        "l2",
        "decay",
        "momentum",
        {"channelwise": ("decay", "momentum")},
    ),
    "linear-l2-elastic_net-momentum": ("linear", "l2", "elastic_net", "momentum", {}),
    "mlp-l2-decay-momentum": ("mlp", "l2", "decay", "momentum", {}),
    "mlp-huber-kl-gd": ("mlp", "huber", "kl", "gd", {}),
    "mlp-l2-decay-adam": ("mlp", "l2", "decay", "adam", {}),
    "gated_mlp-l2-lq_norm-momentum": ("gated_mlp", "l2", "lq_norm", "momentum", {}),
}


def rule_of(case: str):
    *combo, extra = CASES[case]
    return make_rule(*combo, **extra)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= TOL * scale


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk", [1, 4, 5, 16])
def test_chunked_equals_the_recurrent_oracle_with_chunk_level_reads(case, chunk):
    """One call of 33 tokens, and two calls where the second starts mid-chunk: outputs and
    final weights agree (chunk 16: channel-wise decays run SUB = 16 sub-chunks)."""
    rule = rule_of(case)
    q, k, v, gates, _ = random_inputs(rule, seq=33)
    run = {}
    for path in ("chunked", "recurrent"):
        y, state = memory_op(rule, q, k, v, gates, chunk_size=chunk, path=path, reads="chunk")
        _, carried = memory_op(
            rule, *tokens(q, k, v, gates, slice(7)), chunk_size=chunk, path=path, reads="chunk"
        )
        rest, _ = memory_op(
            rule, *tokens(q, k, v, gates, slice(7, None)), carried, chunk_size=chunk, path=path, reads="chunk"
        )
        run[path] = (y, state, rest)
    (y_c, s_c, rest_c), (y_r, s_r, rest_r) = run["chunked"], run["recurrent"]
    assert_close(y_c, y_r)
    assert_close(rest_c, y_r[:, :, 7:])
    assert_close(rest_r, y_r[:, :, 7:])
    for name in s_r.weights:
        assert_close(s_c.weights[name], s_r.weights[name])


@pytest.mark.parametrize("case", ["linear-l2-decay-momentum", "mlp-l2-decay-momentum", "mlp-huber-kl-gd"])
def test_the_writes_are_those_of_token_reads_and_each_chunk_reads_its_start(case):
    """Same final state as reads = "token"; chunk c's reads are M_{W_c}(q) with W_c the state
    token reads leave after chunk c - 1 (the chunk-start weights)."""
    rule = rule_of(case)
    q, k, v, gates, _ = random_inputs(rule, seq=12)
    chunk = 4
    y, state = memory_op(rule, q, k, v, gates, chunk_size=chunk, reads="chunk")
    _, state_token = memory_op(rule, q, k, v, gates, chunk_size=chunk)
    for name in state.weights:
        assert_close(state.weights[name], state_token.weights[name])
    start = rule.initial_state(q.shape[0])
    for c in range(3):
        part = slice(c * chunk, (c + 1) * chunk)
        assert_close(y[:, :, part], rule.read(start.start, q[:, :, part]))
        _, start = memory_op(rule, *tokens(q, k, v, gates, part), start, chunk_size=chunk)


@pytest.mark.parametrize("case", ["linear-l2-decay-momentum", "mlp-l2-decay-momentum", "mlp-l2-decay-adam"])
def test_at_chunk_1_a_token_reads_the_weights_its_predecessor_read(case):
    """At chunk 1 token reads give y_t = M_t(q_t) (after its own update) and chunk reads
    y_t = M_{t-1}(q_t): so chunk reads of q equal token reads of q shifted by one, and the
    first token reads W_init.  (They are not equal to token reads: a token's own write differs.)"""
    rule = rule_of(case)
    q, k, v, gates, _ = random_inputs(rule, seq=9)
    chunk_reads, _ = memory_op(rule, q, k, v, gates, chunk_size=1, reads="chunk")
    shifted = torch.cat([q[:, :, 1:], q[:, :, :1]], dim=2)  # token t - 1 asks q_t
    token_reads, _ = memory_op(rule, shifted, k, v, gates, chunk_size=1)
    assert_close(chunk_reads[:, :, 1:], token_reads[:, :, :-1])
    assert_close(chunk_reads[:, :, :1], rule.read(rule.initial_state(q.shape[0]).weights, q[:, :, :1]))
    plain, _ = memory_op(rule, q, k, v, gates, chunk_size=1)
    assert (plain - chunk_reads).abs().max() > 1e-3  # other semantics


@pytest.mark.parametrize("momentum", ["momentum", "gd"])
def test_the_hand_written_backward_of_chunk_level_reads_matches_autograd(momentum):
    """The batched matrix pass's Function against the autograd form, float64, to 1e-10 relative."""
    rule = make_rule("linear", "l2", "decay", momentum)
    q, k, v, gates, gate_module = random_inputs(rule, seq=12, requires_grad=True, seed=3)
    _, state = chunked_affine.whole_chunks(
        rule, Tokens(*tokens(q, k, v, gates, slice(8))), rule.initial_state(q.shape[0]), 4, False
    )
    inputs = [q, k, v, *gate_module.parameters(), *rule.parameters()]
    generator = torch.Generator()

    def gradients(hand_written: bool):
        y, end = chunked_affine.whole_chunks(
            rule, Tokens(q, k, v, gates), dataclasses.replace(state), 4, hand_written, reads="chunk"
        )
        loss = (y * torch.randn(y.shape, generator=generator.manual_seed(1), dtype=y.dtype)).sum()
        for seed, w in enumerate([*end.weights.values(), *(end.momentum or {}).values()], start=2):
            loss = (
                loss + (w * torch.randn(w.shape, generator=generator.manual_seed(seed), dtype=w.dtype)).sum()
            )
        used = [t for t in inputs if t.requires_grad]
        return y, torch.autograd.grad(loss, used, allow_unused=True, retain_graph=True)

    (y_hand, grads_hand), (y_ref, grads_ref) = gradients(True), gradients(False)
    torch.testing.assert_close(y_hand, y_ref, rtol=1e-10, atol=1e-12)
    assert sum(g is not None for g in grads_ref) >= 4
    for got, want in zip(grads_hand, grads_ref, strict=True):
        if want is None:
            assert got is None or got.abs().max() == 0
            continue
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["linear-l2-decay-momentum", "mlp-huber-kl-gd"])
def test_decoding_token_by_token_continues_a_chunked_state(case):
    """A chunked 5-token prefix (mid-chunk at chunk 4), then one-token recurrent calls: the
    one-call chunked reads, the same through MemoryLayer's keyword entrance."""
    rule = rule_of(case)
    q, k, v, gates, _ = random_inputs(rule, seq=11)
    full, _ = memory_op(rule, q, k, v, gates, chunk_size=4, reads="chunk")
    _, state = memory_op(rule, *tokens(q, k, v, gates, slice(5)), chunk_size=4, reads="chunk")
    steps = []
    for t in range(5, 11):
        y, state = memory_op(
            rule,
            *tokens(q, k, v, gates, slice(t, t + 1)),
            state,
            chunk_size=4,
            path="recurrent",
            reads="chunk",
        )
        steps.append(y)
    assert_close(torch.cat(steps, dim=2), full[:, :, 5:])


def test_the_layer_runs_its_spec_reads_in_training_and_in_decoding():
    """MemoryLayer(reads="chunk"): one call equals decoding token by token (the recurrent
    step, as NeuralMemory takes a one-token call), and differs from reads="token"."""
    from miraslab.memory.layer import MemoryLayer

    torch.manual_seed(0)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    layer = MemoryLayer.from_options(16, heads=2, chunk_size=4, memory="mlp", reads="chunk").double()
    full = layer(x)
    state, steps = None, []
    for t in range(10):
        y, state = layer(x[:, t : t + 1], state, return_state=True)
        steps.append(y)
    assert_close(torch.cat(steps, dim=1), full)
    token = MemoryLayer.from_options(16, heads=2, chunk_size=4, memory="mlp").double()
    token.load_state_dict(layer.state_dict())
    assert (token(x) - full).abs().max() > 1e-6


def test_compiled_chunk_steps_read_as_the_eager_ones():
    rule = rule_of("mlp-l2-decay-momentum")
    q, k, v, gates, _ = random_inputs(rule, seq=12)
    eager, _ = memory_op(rule, q, k, v, gates, chunk_size=4, reads="chunk")
    compiled, _ = memory_op(rule, q, k, v, gates, chunk_size=4, compile_chunks=True, reads="chunk")
    assert_close(compiled, eager)


def test_a_bad_value_names_the_key():
    with pytest.raises(
        RecipeError, match=r"model\.memory\.reads: expected one of \"token\", \"chunk\", got \"tokens\"$"
    ):
        miraslab.load_recipe(REPO / "recipes" / "quickstart.toml", ["model.memory.reads=tokens"])
    with pytest.raises(ValueError, match=r"^reads must be one of \('token', 'chunk'\), got 'x'$"):
        rule = make_rule("linear", "l2", "none", "gd")
        memory_op(rule, *random_inputs(rule, seq=2)[:4], reads="x")


def test_per_token_steps_refuse_chunk_level_reads():
    with pytest.raises(
        RecipeError, match=r"model\.memory\.reads: expected 'token' with inner_steps 'per_token'"
    ):
        miraslab.load_recipe(
            REPO / "recipes" / "quickstart.toml",
            ["model.memory.reads=chunk", "model.memory.inner_steps=per_token", "model.memory.memory=linear"],
        )
    assert MemorySpec.from_options(reads="chunk").reads == "chunk"
