"""memory_op and MemoryLayer refuse inputs that do not fit, in one line naming the argument."""

from __future__ import annotations

import re

import pytest
import torch

from miraslab import MemoryLayer, memory_op
from miraslab.memory.rule.build import build_rule
from miraslab.memory.spec import MemorySpec

B, H, T, D = 2, 4, 10, 8


def make_rule(channelwise: frozenset[str] = frozenset()):
    gates = {f"channelwise_{role}": True for role in channelwise}
    spec = MemorySpec.from_options(memory="linear", retention="decay", algorithm="momentum", gates=gates)
    return build_rule(spec, H, D, D)


def good_inputs(channelwise: frozenset[str] = frozenset()) -> dict:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=generator) for _ in range(3))
    gates = {
        name: (torch.rand(B, H, T, D) if name in channelwise else torch.rand(B, H, T)).mul(0.1)
        for name in ("lr", "momentum")
    }
    gates["decay"] = torch.full((B, H, T, D) if "decay" in channelwise else (B, H, T), -0.05)
    return {"q": q, "k": k, "v": v, "gates": gates}


def bad(**change) -> dict:
    inputs = good_inputs()
    gates = dict(inputs["gates"])
    for name, value in change.pop("gates", {}).items():
        if value is None:
            del gates[name]
        else:
            gates[name] = value
    return {**inputs, **change, "gates": gates}


CASES = {
    "q without heads": (
        bad(q=torch.randn(B, T, D)),
        "memory_op: q must be (batch, heads=4, seq, d_k=8), got shape (2, 10, 8)",
    ),
    "k of another width": (
        bad(k=torch.randn(B, H, T, 16)),
        "memory_op: k must be (batch, heads=4, seq, d_k=8), got shape (2, 4, 10, 16)",
    ),
    "v of another length": (
        bad(v=torch.randn(B, H, 7, D)),
        "memory_op: v must have q's (batch, heads, seq) = (2, 4, 10), got shape (2, 4, 7, 8)",
    ),
    "a missing gate": (
        bad(gates={"decay": None}),
        "memory_op: gates has no 'decay' (this rule's gates: 'decay', 'lr', 'momentum')",
    ),
    "a gate the rule does not use": (
        bad(gates={"window": torch.rand(B, H, T)}),
        "memory_op: gates has 'window', which this rule does not use (its gates: 'decay', 'lr', 'momentum')",
    ),
    "a gate of another length": (
        bad(gates={"lr": torch.rand(B, H, 7)}),
        "memory_op: gates['lr'] must be (2, 4, 10), got shape (2, 4, 7)",
    ),
    "a per-channel gate for a per-head one": (
        bad(gates={"lr": torch.rand(B, H, T, D)}),
        "memory_op: gates['lr'] must be (2, 4, 10), got shape (2, 4, 10, 8)",
    ),
}


@pytest.mark.parametrize("path", ["chunked", "recurrent"])
@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_one_line_naming_it(case, path):
    inputs, message = CASES[case]
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        memory_op(make_rule(), **inputs, chunk_size=4, path=path)


def test_a_channelwise_gate_must_have_one_value_per_value_channel():
    rule = make_rule(frozenset({"decay"}))
    inputs = good_inputs(frozenset({"decay"}))
    memory_op(rule, **inputs, chunk_size=4)  # as the rule asks: fine
    inputs["gates"]["decay"] = torch.full((B, H, T), -0.05)
    message = (
        "memory_op: gates['decay'] must be (2, 4, 10, 8) (one value per value channel), got shape (2, 4, 10)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        memory_op(rule, **inputs, chunk_size=4)


def test_a_state_for_another_batch_is_refused():
    rule = make_rule()
    _, state = memory_op(rule, **good_inputs(), chunk_size=4)
    one = good_inputs()
    one = {
        "q": one["q"][:1],
        "k": one["k"][:1],
        "v": one["v"][:1],
        "gates": {n: g[:1] for n, g in one["gates"].items()},
    }
    message = "memory_op: state is for (batch, heads) = (2, 4), the inputs are (1, 4)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        memory_op(rule, **one, state=state, chunk_size=4)


@pytest.mark.parametrize("shape", [(1024, 32), (2, 10, 16), (2, 3, 10, 32)])
def test_the_layer_names_the_input_shape_it_needs(shape):
    layer = MemoryLayer.from_options(32, heads=2, chunk_size=4)
    message = f"MemoryLayer: x must be (batch, seq, dim=32), got shape {shape}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        layer(torch.randn(*shape))


def test_the_layer_refuses_a_state_that_is_not_its_own_or_for_another_batch():
    layer = MemoryLayer.from_options(32, heads=2, chunk_size=4)
    _, state = layer(torch.randn(2, 10, 32), return_state=True)
    message = "MemoryLayer: state is for batch 2, x has batch 1"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        layer(torch.randn(1, 3, 32), state=state)
    message = "MemoryLayer: state must be the LayerState the layer returned (return_state=True), got NeuralMemoryState"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        layer(torch.randn(2, 3, 32), state=state.memory)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be >= 1, got 0"),
        ({"path": "fast"}, "path must be one of ('chunked', 'recurrent'), got 'fast'"),
    ],
)
def test_the_layer_checks_its_chunk_size_and_path_when_built(options, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        MemoryLayer.from_options(32, heads=2, **options)
