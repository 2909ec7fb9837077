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


def product_algorithms() -> tuple[str, ...]:
    """The algorithms of the combination product: every one on the factored paths, and of those
    with state of their own (``stateful``) only the one that carries the most. They all run
    the one general path (``paths.general``); each is held to its own oracle on linear, MLP
    and Omega rules, both paths and split calls, in tests/test_stateful_algorithms.py and by
    the kit, and each more in the product would add over 300 cases to every CI run."""
    infos = {name: get_registry().get("algorithm", name) for name in ALGORITHMS}
    built = {name: info.factory(info.params()) for name, info in infos.items()}
    stateful = {name: len(algo.state_defs()) for name, algo in built.items() if algo.stateful}
    keep = max(stateful, key=lambda name: (stateful[name], name)) if stateful else None
    return tuple(name for name in ALGORITHMS if name not in stateful or name == keep)


PRODUCT_ALGORITHMS = product_algorithms()


def all_combinations() -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(valid, rejected) combinations of the four axes (``PRODUCT_ALGORITHMS`` on the fourth)."""
    valid, rejected = [], []
    for combo in itertools.product(MEMORIES, BIASES, RETENTIONS, PRODUCT_ALGORITHMS):
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
