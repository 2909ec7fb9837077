"""miraslab.testing, the conformance kit: every built-in passes it, and it catches what it claims.

Tolerances are the kit's own, stated in miraslab.testing: float64 paths 1e-9 of the scale,
hand-written gradients against autograd 1e-10, layouts' decode 1e-10, attention backends
(float32) against the float64 oracle 1e-5.
"""

from __future__ import annotations

import attrs
import pytest
import torch

import miraslab
from miraslab.api import AttentionalBias, MemoryArchitecture, Retention
from miraslab.testing import (
    KitFailure,
    RuleCase,
    check_bias_gradient,
    check_component,
    check_decode_continues,
    check_paths_agree,
    check_rule,
    option_variants,
    registered,
)


@pytest.mark.miraslab_components(distribution="miraslab")
def test_every_builtin_component_passes_the_kit(miraslab_kit, miraslab_component):
    miraslab_kit(*miraslab_component)


def test_the_builtins_parametrised_are_every_component_of_every_kind():
    registry = miraslab.get_registry()
    assert registered(distribution="miraslab") == [(c.kind, c.name) for c in registry.components()]


# --- a bias whose gradient() dropped a factor that is 1 at its default -----------------------


@attrs.frozen
class ScaledL2Params:
    scale: float = miraslab.param(1.0, gt=0, doc="weight of the error")


class DroppedFactor(AttentionalBias):
    """scale/2 ||M(k) - v||^2, whose gradient() forgot the scale."""

    def __init__(self, params: ScaledL2Params):
        super().__init__()
        self.scale = params.scale

    def loss(self, pred, target, gates):
        return 0.5 * self.scale * (pred - target).pow(2).sum(-1)

    def gradient(self, pred, target, gates):
        return pred - target  # wrong: scale * (pred - target)


class WrongBiases:
    @miraslab.hookimpl
    def register_biases(self, register):
        register("dropped_factor", DroppedFactor, ScaledL2Params)


@pytest.fixture
def dropped_factor(register_plugin):
    register_plugin(WrongBiases(), name="wrong-biases")


def test_a_gradient_wrong_only_away_from_the_default_passes_the_path_checks(dropped_factor):
    """Why the kit compares with autograd: both paths use the same wrong gradient and agree."""
    for bias in ("dropped_factor", {"name": "dropped_factor", "scale": 2.5}):
        rule = RuleCase("linear", bias, "decay", "momentum").build()
        check_paths_agree(rule)
        check_decode_continues(rule)
    check_rule(RuleCase("linear", "dropped_factor", "decay", "momentum"))  # every check, at the default
    check_bias_gradient(DroppedFactor(ScaledL2Params()).double())  # at the default the factor is 1


def test_the_kit_catches_a_gradient_that_dropped_a_factor(dropped_factor):
    assert {"scale": 1.5} in option_variants("bias", "dropped_factor")
    with pytest.raises(
        KitFailure, match=r"bias dropped_factor\[scale=.*\].*gradient\(\) vs autograd of loss\(\)"
    ):
        check_component("bias", "dropped_factor")


# --- the other contracts fail when broken -----------------------------------------------------


@attrs.frozen
class NoParams:
    pass


class PeeksAhead(Retention):
    """A retention whose decay reads the next token's gate: not causal, and the paths disagree."""

    decay_gate = "decay"

    def __init__(self, params: NoParams):
        super().__init__()

    def gates(self):
        return [miraslab.GateDef("decay", "log_sigmoid", init=0.9)]

    def log_alpha(self, gates):
        return gates["decay"].roll(-1, dims=2)


class WrongRetentions:
    @miraslab.hookimpl
    def register_retentions(self, register):
        register("peeks_ahead", PeeksAhead, NoParams)


def test_the_kit_catches_a_retention_that_reads_the_future(register_plugin):
    register_plugin(WrongRetentions(), name="wrong-retentions")
    with pytest.raises(KitFailure, match=r"retention.*peeks_ahead|peeks_ahead.*differ by"):
        check_component("retention", "peeks_ahead")


class WrongBiasFactor(MemoryArchitecture):
    """x + W2 tanh(W1 x + b1) + b2 whose analytic_factors writes b1's factor with W2's delta
    (the shapes fit at expansion 1): the paths agree, autograd through forward does not."""

    def __init__(self, params: NoParams, heads: int, d_in: int, d_out: int):
        super().__init__(heads, d_in, d_out)
        self.make_init("w1", d_out, d_in, bias=True)
        self.make_init("w2", d_out, d_out, bias=True)

    def forward(self, x, linear):
        return x + linear("w2", torch.tanh(linear("w1", x)))

    def analytic_factors(self, x, linear, transposed, dloss):
        z1 = linear("w1", x)
        hidden = torch.tanh(z1)
        delta2 = dloss(x + linear("w2", hidden))
        delta1 = transposed("w2", delta2) * (1 - hidden.pow(2))
        ones = x.new_ones(*x.shape[:-1], 1)
        return {"w1": (x, delta1), "w1_bias": (ones, delta2), "w2": (hidden, delta2)}  # wrong: delta1


class WrongMemories:
    @miraslab.hookimpl
    def register_memories(self, register):
        register("wrong_bias_factor", WrongBiasFactor, NoParams)


def test_the_kit_catches_a_wrong_bias_factor_and_passes_the_builtins_with_biases(register_plugin):
    for memory in ("mlp", "gated_mlp"):  # the engine derives their biases' factors
        check_component("memory", memory, {"bias": True})
    register_plugin(WrongMemories(), name="wrong-memories")
    rule = RuleCase("wrong_bias_factor", "l2", "none", "gd").build()
    check_paths_agree(rule)  # both paths use the same wrong factor
    with pytest.raises(KitFailure, match=r"delta of 'w1_bias', hand-written vs autograd"):
        check_component("memory", "wrong_bias_factor")


def test_a_failure_names_the_rule_the_chunk_and_the_tolerance(dropped_factor):
    with pytest.raises(KitFailure) as failure:
        check_component("bias", "dropped_factor")
    message = str(failure.value)
    assert "input scale" in message and "tolerance 1e-10" in message


def test_option_variants_stay_inside_the_declared_ranges():
    """Each variant changes one field from its default and passes the params' own validation."""
    registry = miraslab.get_registry()
    for kind in ("memory", "bias", "retention", "algorithm", "features"):
        for name in registry.names(kind):
            variants = option_variants(kind, name)
            assert variants[0] == {}
            for variant in variants[1:]:
                assert len(variant) == 1
                miraslab.api.make_component(kind, name, variant, registry)


def test_an_unknown_component_is_the_registry_error():
    with pytest.raises(miraslab.MiraslabError, match="unknown bias 'nope'"):
        check_component("bias", "nope")


def test_the_memory_checks_leave_no_gradient_behind():
    rule = RuleCase().build()
    check_rule(RuleCase())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in rule.parameters())
