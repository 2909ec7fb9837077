"""This distribution's components pass miraslab's conformance kit (tolerances: the kit's,
float64: paths 1e-9, gradients against autograd 1e-10)."""

from __future__ import annotations

import pytest

from miraslab.testing import RuleCase, check_component, check_rule


@pytest.mark.miraslab_components(distribution="miraslab-logcosh")
def test_every_component_passes_the_kit(miraslab_kit, miraslab_component):
    miraslab_kit(*miraslab_component)


@pytest.mark.parametrize("sharpness", [0.5, 4.0])
def test_logcosh_at_other_sharpness(sharpness):
    check_component("bias", "logcosh", {"sharpness": sharpness})


def test_the_two_together_with_an_omega_window():
    check_rule(RuleCase("ttt_ln", {"name": "omega", "inner": "logcosh", "window": 3}, "decay", "momentum"))
