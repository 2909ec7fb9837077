"""The kit checks the rule, not only its consistency: the engine's recurrent path is held to each
component's own plain per-token reference (``reference_step``, ``reference_gradient``).

Tolerance: ``REFERENCE_TOLERANCE`` (1e-9 of the reference's scale, float64, chunk 1, 6 tokens).
"""

from __future__ import annotations

import attrs
import pytest
import torch

import miraslab
from miraslab.api import GateDef, LearningAlgorithm
from miraslab.testing import (
    REFERENCE_TOLERANCE,
    KitFailure,
    RuleCase,
    check_component,
    check_reference,
    check_rule,
    has_reference,
)


def test_the_reference_tolerance_is_stated():
    assert REFERENCE_TOLERANCE == 1e-9


@pytest.mark.parametrize("algorithm", ["gd", "momentum", "muon"])
@pytest.mark.parametrize("gradient_at", ["previous", "decayed"])
def test_the_builtin_algorithms_equal_their_papers_equations(algorithm, gradient_at):
    rule = RuleCase("linear", "l2", {"name": "decay", "gradient_at": gradient_at}, algorithm).build()
    assert has_reference("algorithm", rule.algorithm)
    check_reference(rule, what=rule.algorithm.component_name)


@pytest.mark.parametrize("bias", ["l2", "dot", "lp", "huber", {"name": "huber", "data_dependent": True}])
def test_the_builtin_biases_equal_their_papers_gradients(bias):
    rule = RuleCase("linear", bias, "none", "gd").build()
    assert has_reference("bias", rule.bias)
    check_reference(rule)


# --- an algorithm that is consistent with itself but is not the rule its name claims -------------


@attrs.frozen
class NesterovParams:
    pass


class FirstOrderNesterov(LearningAlgorithm):
    """Claims Nesterov's momentum as torch.optim.SGD(nesterov=True, dampening=0) takes it:

        b_t = eta_t b_{t-1} + g_t,   W_t = alpha_t W_{t-1} - theta_t (g_t + eta_t b_t)

    (its reference_step), but runs heavy-ball with the step theta_t (1 + eta_t): the first-order
    approximation, which drops the eta_t^2 b_{t-1} term of exact Nesterov.
    """

    momentum = True
    momentum_gate = "momentum"

    def __init__(self, params: NesterovParams):
        super().__init__()

    def gates(self):
        return [GateDef("lr", "sigmoid", init=0.1), GateDef("momentum", "log_sigmoid", init=0.9)]

    def lr(self, gates):
        return gates["lr"] * (1 + torch.exp(gates["momentum"]))

    def log_eta(self, gates):
        return gates["momentum"]

    def reference_step(self, weight, state, grad, gates, alpha):
        theta, eta = gates["lr"][..., None, None], torch.exp(gates["momentum"])[..., None, None]
        b = grad if state is None else eta * state + grad
        return alpha[..., None, None] * weight - theta * (grad + eta * b), b


class WithoutReference(FirstOrderNesterov):
    """The same rule, shipped without a reference."""

    reference_step = None


class NesterovPlugin:
    @miraslab.hookimpl
    def register_algorithms(self, register):
        register("nesterov_first_order", FirstOrderNesterov, NesterovParams)
        register("unreferenced_momentum", WithoutReference, NesterovParams)


@pytest.fixture
def nesterov(register_plugin):
    register_plugin(NesterovPlugin(), name="nesterov-approx")


def test_a_self_consistent_approximation_passes_every_consistency_check(nesterov):
    for partner in (RuleCase("linear", "l2", "decay"), RuleCase("mlp", "l2", "none")):
        check_rule(partner.with_axis("algorithm", "nesterov_first_order"))


def test_the_kit_fails_an_algorithm_that_is_not_its_reference(nesterov):
    failure = r"linear-l2-decay-nesterov_first_order: the engine .* vs the reference"
    with pytest.raises(KitFailure, match=failure):
        check_component("algorithm", "nesterov_first_order")


def test_the_report_lists_the_rules_and_options_held_to_the_reference():
    report = check_component("algorithm", "momentum")
    assert report.referenced[0] == "linear-l2-decay-momentum"
    assert "linear-l2-decay-momentum[normalized=False]" in report.referenced
    assert set(report.referenced) <= set(report.checked)
    assert report.reference.startswith("algorithm 'momentum': the recurrent path held to its reference_step")
    assert "mlp-l2-none-momentum" in str(report)


def test_a_component_without_a_reference_is_reported_consistency_only(nesterov):
    report = check_component("algorithm", "unreferenced_momentum")
    assert report.referenced == []
    assert report.reference == "consistency only: no reference_step"
