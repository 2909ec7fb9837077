"""Helpers for memory-engine tests: every built-in combination, and random inputs for a rule."""

from __future__ import annotations

import itertools

from miraslab import testing
from miraslab.errors import RecipeError
from miraslab.memory.rule.build import build_rule
from miraslab.memory.rule.memory_rule import MemoryRule
from miraslab.memory.spec import GatesSpec, MemorySpec
from miraslab.params import make_component
from miraslab.registry import get_registry

# every component of each axis the registry holds: a plugin installed beside the built-ins is
# checked with them, and no count is written down anywhere
MEMORIES, BIASES, RETENTIONS, ALGORITHMS = (tuple(get_registry().names(kind)) for kind in testing.AXES)
# small, non-default options so every code path (windows, decays, thresholds) is exercised
OPTIONS = {
    "omega": {"window": 3, "decay_base": 0.9},
    "huber": {"delta": 0.5, "data_dependent": True},
    "lp": {"p": 3.0},
    "muon": {"ns_steps": 3},
    "mlp": {"expansion": 2},
    "gated_mlp": {"expansion": 2},
}


def component(kind: str, name: str, **options):
    return make_component(kind, name, {**OPTIONS.get(name, {}), **options}, get_registry())


def make_rule(
    memory: str,
    bias: str,
    retention: str,
    algorithm: str,
    heads: int = 2,
    d: int = 4,
    d_key: int | None = None,
    channelwise_lr: bool = False,
    options: dict[str, dict] | None = None,
    channelwise_window: bool = False,
    channelwise: tuple[str, ...] = (),
) -> MemoryRule:
    """A float64 rule; ``options`` = {"retention": {...}, ...} overrides a part's params."""
    options = options or {}
    roles = {*channelwise, *(["lr"] if channelwise_lr else []), *(["window"] if channelwise_window else [])}
    spec = MemorySpec(
        memory=component("memory", memory, **options.get("memory", {})),
        bias=component("bias", bias, **options.get("bias", {})),
        retention=component("retention", retention, **options.get("retention", {})),
        algorithm=component("algorithm", algorithm, **options.get("algorithm", {})),
        gates=GatesSpec(**{f"channelwise_{role}": True for role in roles}),
    )
    return build_rule(spec, heads, d_key or d, d).double()


def all_combinations() -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(valid, rejected) combinations of the four axes."""
    valid, rejected = [], []
    for combo in itertools.product(MEMORIES, BIASES, RETENTIONS, ALGORITHMS):
        try:
            make_rule(*combo)
        except RecipeError:
            rejected.append(combo)
        else:
            valid.append(combo)
    return valid, rejected


# the kit's inputs, so the engine's own tests and a plugin's run on the same cases
random_inputs = testing.random_inputs
tokens = testing.tokens
