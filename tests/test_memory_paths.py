"""The two execution paths agree for every valid built-in combination of the Miras axes.

Tolerances: float64 everywhere, outputs compared with atol 1e-9 relative to their scale
(the paths differ only in summation order).
"""

from __future__ import annotations

import pytest
import torch
from memory_cases import (
    ALGORITHMS,
    BIASES,
    MEMORIES,
    RETENTIONS,
    all_combinations,
    make_rule,
    random_inputs,
    tokens,
)

from miraslab.errors import RecipeError
from miraslab.memory.paths.memory_op import memory_op

VALID, REJECTED = all_combinations()
TOL = 1e-9


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= TOL * scale


def test_every_axis_has_valid_combinations_and_only_chunk_end_retentions_are_rejected():
    """Counted from the registry, so a plugin's component joins the product instead of breaking a
    number: every component of every axis is in some valid combination, and only the retentions
    with a chunk-end step refuse partners (see the rejected test below)."""
    axes = (MEMORIES, BIASES, RETENTIONS, ALGORITHMS)
    assert len(VALID) + len(REJECTED) == len(MEMORIES) * len(BIASES) * len(RETENTIONS) * len(ALGORITHMS)
    for index, names in enumerate(axes):
        assert {combo[index] for combo in VALID} == set(names)
    assert len(REJECTED) < len(VALID) / 2
    for combo in REJECTED:
        retention = make_rule("linear", "l2", combo[2], "gd").retention
        assert retention.nonlinear or retention.needs_decayed_update, combo


@pytest.mark.parametrize("combo", VALID, ids="-".join)
def test_chunked_with_chunk_1_equals_recurrent(combo):
    rule = make_rule(*combo)
    q, k, v, gates, _ = random_inputs(rule, seq=6)
    chunked, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path="chunked")
    recurrent, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path="recurrent")
    assert_close(chunked, recurrent)


@pytest.mark.parametrize("combo", VALID, ids="-".join)
def test_chunked_equals_the_per_token_loop_with_the_same_mini_batch_semantics(combo):
    rule = make_rule(*combo)
    q, k, v, gates, _ = random_inputs(rule, seq=11)
    chunked, state_c = memory_op(rule, q, k, v, gates, chunk_size=4, path="chunked")
    recurrent, state_r = memory_op(rule, q, k, v, gates, chunk_size=4, path="recurrent")
    assert_close(chunked, recurrent)
    for name in state_c.weights:
        assert_close(state_c.weights[name], state_r.weights[name])
        assert_close(state_c.start[name], state_r.start[name])
    assert state_c.offset == state_r.offset == 3


@pytest.mark.parametrize("combo", VALID, ids="-".join)
def test_decoding_token_by_token_continues_exactly_from_the_chunked_state(combo):
    rule = make_rule(*combo)
    q, k, v, gates, _ = random_inputs(rule, seq=10)
    full, _ = memory_op(rule, q, k, v, gates, chunk_size=4, path="chunked")
    _, state = memory_op(rule, *tokens(q, k, v, gates, slice(5)), chunk_size=4, path="chunked")
    steps = []
    for t in range(5, 10):
        y, state = memory_op(
            rule, *tokens(q, k, v, gates, slice(t, t + 1)), state, chunk_size=4, path="recurrent"
        )
        steps.append(y)
    assert_close(torch.cat(steps, dim=2), full[:, :, 5:])


@pytest.mark.parametrize("combo", VALID, ids="-".join)
def test_gradients_reach_every_gate_and_memory_parameter(combo):
    rule = make_rule(*combo)
    q, k, v, gates, gate_module = random_inputs(rule, seq=7, requires_grad=True)
    y, state = memory_op(rule, q, k, v, gates, chunk_size=3, path="chunked")
    (y.pow(2).sum() + sum(w.sum() for w in state.weights.values())).backward()
    for name, parameter in [*gate_module.named_parameters(), *rule.named_parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for tensor in (q, k, v):
        assert tensor.grad.abs().sum() > 0


@pytest.mark.parametrize("combo", REJECTED, ids="-".join)
def test_combinations_that_make_no_sense_are_rejected_with_a_reason(combo):

    with pytest.raises(RecipeError, match=r"model\.memory: .*(compose|use algorithm 'gd')"):
        make_rule(*combo)


@pytest.mark.parametrize("combo", VALID, ids="-".join)
def test_a_call_that_starts_mid_chunk_then_runs_whole_chunks_matches_the_loop(combo):
    """Pieces 3 + 4 + 4 + 3 after a 5-token call: the run of whole chunks is batched."""
    rule = make_rule(*combo)
    q, k, v, gates, _ = random_inputs(rule, seq=19)

    def two_calls(path):
        _, state = memory_op(rule, *tokens(q, k, v, gates, slice(5)), chunk_size=4, path=path)
        return memory_op(rule, *tokens(q, k, v, gates, slice(5, None)), state, chunk_size=4, path=path)

    (chunked, state_c), (recurrent, state_r) = two_calls("chunked"), two_calls("recurrent")
    assert_close(chunked, recurrent)
    for name in state_c.weights:
        assert_close(state_c.weights[name], state_r.weights[name])


@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_plugins_see_gates_per_token_whatever_the_engine_batches(memory):
    """docs/plugins.md promises (B, H, T[, d_v]) gates; the batched paths must keep that promise."""
    rule = make_rule(memory, "l2", "decay", "momentum")
    seen = []
    for part in (rule.retention, rule.algorithm):
        for method in ("log_alpha", "lr", "log_eta"):
            original = getattr(part, method, None)
            if original is None:
                continue

            def recording(gates, original=original):
                seen.append({n: g.dim() for n, g in gates.items()})
                return original(gates)

            setattr(part, method, recording)
    q, k, v, gates, _ = random_inputs(rule, seq=12)
    memory_op(rule, q, k, v, gates, chunk_size=4, path="chunked")
    assert seen and all(dims == {n: 3 for n in gates} for dims in seen)


def test_a_sequence_shorter_than_a_chunk_still_writes_the_memory():
    rule = make_rule("mlp", "l2", "decay", "momentum")
    q, k, v, gates, _ = random_inputs(rule, seq=3)
    _, state = memory_op(rule, q, k, v, gates, chunk_size=64)
    initial = rule.initial_state(q.shape[0])
    assert state.offset == 3
    assert all((state.weights[n] - initial.weights[n]).abs().max() > 1e-3 for n in state.weights)


def test_a_sequence_that_is_not_a_multiple_of_the_chunk_matches_the_loop():
    rule = make_rule("linear", "l2", "decay", "momentum")
    q, k, v, gates, _ = random_inputs(rule, seq=13)
    chunked, _ = memory_op(rule, q, k, v, gates, chunk_size=5, path="chunked")
    recurrent, _ = memory_op(rule, q, k, v, gates, chunk_size=5, path="recurrent")
    assert_close(chunked, recurrent)


def test_an_empty_sequence_returns_no_outputs_and_the_initial_state():
    rule = make_rule("linear", "l2", "none", "gd")
    q, k, v, gates, _ = random_inputs(rule, seq=0)
    y, state = memory_op(rule, q, k, v, gates, chunk_size=4)
    assert y.shape == (2, 2, 0, 4) and state.offset == 0


WINDOWED = [
    (memory, "omega", retention, algorithm)
    for memory in ("linear", "mlp", "gated_mlp")
    for retention in ("none", "decay")
    for algorithm in ("gd", "momentum")
]


@pytest.mark.parametrize("combo", WINDOWED, ids="-".join)
def test_channelwise_window_gates_agree_between_paths_and_with_decoding(combo):
    """gamma_i per value channel: chunk 1 and chunk 4 equal the token loop, and decoding
    token by token continues from a chunked state (the window spans the chunk boundary)."""
    rule = make_rule(*combo, channelwise_window=True)
    q, k, v, gates, _ = random_inputs(rule, seq=10)
    assert gates["omega"].shape == (2, 2, 10, 4)
    for chunk in (1, 4):
        chunked, _ = memory_op(rule, q, k, v, gates, chunk_size=chunk, path="chunked")
        recurrent, _ = memory_op(rule, q, k, v, gates, chunk_size=chunk, path="recurrent")
        assert_close(chunked, recurrent)
    _, state = memory_op(rule, *tokens(q, k, v, gates, slice(6)), chunk_size=4)
    rest, _ = memory_op(rule, *tokens(q, k, v, gates, slice(6, None)), state, chunk_size=4, path="recurrent")
    assert_close(rest, chunked[:, :, 6:])


@pytest.mark.parametrize("bias", ["l2", "omega-ungated"])
def test_channelwise_window_gates_without_window_gates_are_rejected(bias):

    options = {"bias": {"gated": False}} if bias == "omega-ungated" else None
    with pytest.raises(
        RecipeError, match=r"model\.memory: channel-wise window gates need .*omega with gated = true"
    ):
        make_rule("linear", bias.split("-")[0], "none", "gd", options=options, channelwise_window=True)


def test_channelwise_window_gates_change_the_output_per_channel():
    """Not the per-head gate in disguise: replacing each gamma_i by its channel mean changes the output."""
    rule = make_rule("mlp", "omega", "decay", "momentum", channelwise_window=True)
    q, k, v, gates, _ = random_inputs(rule, seq=8)
    y, _ = memory_op(rule, q, k, v, gates, chunk_size=4)
    mean = {**gates, "omega": gates["omega"].mean(-1, keepdim=True).expand_as(gates["omega"])}
    y_mean, _ = memory_op(rule, q, k, v, mean, chunk_size=4)
    assert (y - y_mean).abs().max() > 1e-6


def test_channelwise_learning_rate_agrees_between_paths_and_differs_per_channel():
    rule = make_rule("mlp", "l2", "decay", "momentum", channelwise_lr=True)
    q, k, v, gates, _ = random_inputs(rule, seq=9)
    assert gates["lr"].shape == (2, 2, 9, 4)
    chunked, _ = memory_op(rule, q, k, v, gates, chunk_size=4, path="chunked")
    recurrent, _ = memory_op(rule, q, k, v, gates, chunk_size=4, path="recurrent")
    assert_close(chunked, recurrent)


def _channelwise_decay_cases() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    cases = []
    for bias in ("l2", "dot", "huber", "omega"):
        for retention in ("decay", "lq_norm", "elastic_net"):
            for algorithm in ("gd", "momentum", "muon"):
                for roles in (("decay",), ("momentum",), ("decay", "momentum")):
                    try:
                        make_rule("linear", bias, retention, algorithm, channelwise=roles)
                    except RecipeError:
                        continue
                    cases.append((("linear", bias, retention, algorithm), roles))
    return cases


CHANNELWISE_DECAYS = _channelwise_decay_cases()


@pytest.mark.parametrize(
    "combo, roles", CHANNELWISE_DECAYS, ids=["-".join((*c, *r)) for c, r in CHANNELWISE_DECAYS]
)
def test_channelwise_decays_agree_between_paths_and_with_decoding(combo, roles):
    """alpha and/or eta per value channel: chunks of 1, 4 and 37 equal the token loop (37 runs
    as two sub-chunks of SUB tokens and a shorter piece, or, with an Omega window, as pieces of
    SUB tokens), the states agree, and decoding token by token continues from a chunked state
    mid-chunk.  Tolerance: float64, atol 1e-10."""
    from miraslab.memory.paths.chunked_channelwise import SUB

    assert 2 * SUB < 37
    rule = make_rule(*combo, channelwise=roles)
    q, k, v, gates, _ = random_inputs(rule, seq=80)
    for chunk in (1, 4, 37):
        chunked, chunked_state = memory_op(rule, q, k, v, gates, chunk_size=chunk, path="chunked")
        recurrent, recurrent_state = memory_op(rule, q, k, v, gates, chunk_size=chunk, path="recurrent")
        assert_close(chunked, recurrent)
        assert_close(chunked_state.weights["w"], recurrent_state.weights["w"])
        assert chunked_state.log_decay.shape == recurrent_state.log_decay.shape
    split = 37 + 21  # the chunked call ends inside the second chunk, after a piece boundary
    _, state = memory_op(rule, *tokens(q, k, v, gates, slice(split)), chunk_size=37)
    assert state.log_decay.shape == ((2, 2, 4) if "decay" in roles else (2, 2))
    rest, _ = memory_op(
        rule, *tokens(q, k, v, gates, slice(split, None)), state, chunk_size=37, path="recurrent"
    )
    assert_close(rest, chunked[:, :, split:])


@pytest.mark.parametrize("gate", ["decay", "momentum"])
def test_channelwise_decays_change_the_output_per_channel(gate):
    """Not the per-head gate in disguise: replacing each token's gate by its channel mean changes the output."""
    rule = make_rule("linear", "l2", "decay", "momentum", channelwise=(gate,))
    q, k, v, gates, _ = random_inputs(rule, seq=8)
    y, _ = memory_op(rule, q, k, v, gates, chunk_size=4)
    mean = {**gates, gate: gates[gate].mean(-1, keepdim=True).expand_as(gates[gate])}
    y_mean, _ = memory_op(rule, q, k, v, mean, chunk_size=4)
    assert (y - y_mean).abs().max() > 1e-6


REJECTED_CHANNELWISE = [
    (
        ("mlp", "l2", "decay", "momentum"),
        ("decay",),
        r"rows \(value channels\) of a matrix memory.*use memory 'linear'",
    ),
    (("gated_mlp", "l2", "decay", "momentum"), ("momentum",), r"memory 'gated_mlp' has hidden layers"),
    (
        ("linear", "l2", "none", "gd"),
        ("decay",),
        r"channel-wise decay needs a retention with a decay gate.*'none'",
    ),
    (
        ("linear", "l2", "kl", "gd"),
        ("decay",),
        r"channel-wise decay needs a retention with a decay gate.*'kl'",
    ),
    (
        ("linear", "l2", "decay", "gd"),
        ("momentum",),
        r"channel-wise momentum needs an algorithm with a momentum gate",
    ),
    (
        ("linear", "l2", "decay", "muon"),
        ("decay",),
        r"algorithm 'muon' scales its chunk-end step by one decay",
    ),
]


@pytest.mark.parametrize(
    "combo, roles, message",
    REJECTED_CHANNELWISE,
    ids=["-".join((*c, *r)) for c, r, _ in REJECTED_CHANNELWISE],
)
def test_channelwise_decays_that_cannot_run_are_rejected(combo, roles, message):
    with pytest.raises(RecipeError, match=r"model\.memory: .*" + message):
        make_rule(*combo, channelwise=roles)
