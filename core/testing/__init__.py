"""miraslab's conformance kit: the engine's contracts, checked on any registered component.

Plain functions, each raising ``KitFailure`` (an ``AssertionError``) that names the check,
the component, its options and the error against the stated tolerance::

    from miraslab.testing import check_component, check_rule, RuleCase

    check_component("bias", "logcosh")                  # whatever fits the kind
    check_rule(RuleCase("mlp", "logcosh", "decay", "momentum"))   # one whole combination

and a pytest plugin (``pytest_plugins = ["miraslab.testing.pytest_plugin"]``) with the
``miraslab_kit`` fixture.  docs/plugins.md lists what each kind is held to.
"""

from __future__ import annotations

from .components import check_component, registered
from .failure import KitFailure, expect_close, relative_error
from .inner_gradients import GRADIENT_TOLERANCE, SCALES, check_bias_gradient, check_inner_factors
from .memory_axes import PARTNERS, AxisReport, check_axis, check_features, check_memory_layer, check_rule
from .memory_inputs import AXES, RuleCase, random_inputs, tokens
from .memory_paths import (
    PATH_TOLERANCE,
    check_decode_continues,
    check_finite,
    check_gradients_reach,
    check_paths_agree,
    check_short_sequence,
)
from .model_checks import (
    ATTENTION_TOLERANCE,
    DECODE_TOLERANCE,
    check_attention_backend,
    check_causal,
    check_decode_equals_forward,
    check_gradients_reach_model,
    check_layout,
    check_mixer,
    check_model,
    tiny_model,
)
from .monitor_checks import KitRun, check_monitor
from .options import option_variants
from .references import REFERENCE_TOLERANCE, check_reference, has_reference, reference_loop
from .task_checks import check_task

__all__ = [  # noqa: RUF022 -- grouped: entry points, memory rules, around the memory, tolerances
    "check_component",
    "registered",
    "KitFailure",
    "expect_close",
    "relative_error",
    "AXES",
    "RuleCase",
    "PARTNERS",
    "AxisReport",
    "check_rule",
    "check_axis",
    "check_features",
    "check_memory_layer",
    "check_paths_agree",
    "check_decode_continues",
    "check_short_sequence",
    "check_gradients_reach",
    "check_finite",
    "check_bias_gradient",
    "check_inner_factors",
    "check_reference",
    "has_reference",
    "reference_loop",
    "random_inputs",
    "tokens",
    "option_variants",
    "check_layout",
    "check_model",
    "check_decode_equals_forward",
    "check_causal",
    "check_gradients_reach_model",
    "tiny_model",
    "check_attention_backend",
    "check_mixer",
    "check_task",
    "check_monitor",
    "KitRun",
    "PATH_TOLERANCE",
    "GRADIENT_TOLERANCE",
    "REFERENCE_TOLERANCE",
    "DECODE_TOLERANCE",
    "ATTENTION_TOLERANCE",
    "SCALES",
]
