"""An axis plugin carries state of its own through a chunk by declaring it (``chunk_sums``):
no ``MemoryState`` field and no engine flag named after it, and both paths agree.

The plugin here is written in this file, outside ``plugins/``, against the public face
only: a gradient-descent algorithm whose chunk-end step shrinks the chunk's update by
1 / (1 + sum_i prod_{j>i} alpha_j theta_i^2), a quantity no built-in needs.
"""

from __future__ import annotations

import attrs
import pytest
import torch
from memory_cases import component, random_inputs, tokens

import miraslab
from miraslab.api import ChunkEnd, GateDef, LearningAlgorithm, memory_op, use_registry
from miraslab.memory.rule.axes import check_parts
from miraslab.memory.rule.build import build_rule
from miraslab.memory.spec import MemorySpec
from miraslab.registry import Registry, Source


@attrs.frozen
class DampedParams:
    normalized: bool = True


class DampedGD(LearningAlgorithm):
    nonlinear = True  # it has a chunk-end step

    def __init__(self, params: DampedParams):
        super().__init__()
        self.normalized = params.normalized

    def gates(self) -> list[GateDef]:
        return [GateDef("lr", "sigmoid", init=0.3, scale=1.0)]

    def chunk_sums(self):
        return {"damped_lr2": lambda gates: self.lr(gates) ** 2}

    def chunk_end(self, end: ChunkEnd):
        shrink = 1.0 / (1.0 + end.sums["damped_lr2"])[..., None, None]
        decay = torch.exp(end.log_decay)[..., None, None]
        return {n: decay * end.start[n] + shrink * (w - decay * end.start[n]) for n, w in end.weights.items()}


class DampedPlugin:
    @miraslab.hookimpl
    def register_algorithms(self, register):
        register("damped_gd", DampedGD, DampedParams)


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry()
    registry.load_entry_points()
    registry.register_plugin(DampedPlugin(), Source("damped", "damped-dist", "0.1"))
    return registry


def rule_with(registry: Registry, retention: str, memory: str = "linear"):
    with use_registry(registry):
        spec = MemorySpec(
            memory=component("memory", memory),
            bias=component("bias", "l2"),
            retention=component("retention", retention),
            algorithm=component("algorithm", "damped_gd"),
        )
        return build_rule(spec, 2, 4, 4).double()


def test_the_declared_sum_is_carried_in_the_state_not_a_field():
    assert "damped_lr2" not in {f for f in miraslab.api.MemoryState.__dataclass_fields__}


@pytest.mark.parametrize("memory", ["linear", "mlp"])
@pytest.mark.parametrize("retention", ["none", "decay"])
@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_chunked_equals_recurrent_with_the_plugins_own_accumulator(registry, retention, memory, chunk):
    """float64, 1e-9 of the output's scale: seq 10 (chunk 3 and 4 do not divide it), split in
    two calls at token 5 (mid-chunk), continuing from the carried state."""
    rule = rule_with(registry, retention, memory)
    q, k, v, gates, _ = random_inputs(rule, seq=10)
    whole, _ = memory_op(rule, q, k, v, gates, chunk_size=chunk, path="recurrent")
    first, state = memory_op(rule, *tokens(q, k, v, gates, slice(0, 5)), chunk_size=chunk)
    second, _ = memory_op(rule, *tokens(q, k, v, gates, slice(5, 10)), state=state, chunk_size=chunk)
    chunked = torch.cat([first, second], dim=2)
    scale = whole.abs().max()
    assert (chunked - whole).abs().max() <= 1e-9 * scale


def test_the_accumulator_changes_the_result(registry):
    """Against the same rule with the sum forced to zero, the chunk-end step does something."""
    rule = rule_with(registry, "decay")
    q, k, v, gates, _ = random_inputs(rule, seq=8)
    y, _ = memory_op(rule, q, k, v, gates, chunk_size=4)
    rule.algorithm.chunk_sums = lambda: {"damped_lr2": lambda g: torch.zeros_like(g["lr"])}
    y_zero, _ = memory_op(rule, q, k, v, gates, chunk_size=4)
    assert (y - y_zero).abs().max() > 1e-3 * y.abs().max()


def test_two_axes_declaring_the_same_sum_are_refused(registry):
    rule = rule_with(registry, "none")
    rule.retention.chunk_sums = lambda: {"damped_lr2": lambda g: g["lr"]}
    problems = check_parts(rule.arch, rule.bias, rule.retention, rule.algorithm)
    assert any("both declare chunk sums ['damped_lr2']" in p for p in problems), problems
