"""Helpers for memory-engine tests: every built-in combination, and random inputs for a rule."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from miraslab.errors import RecipeError
from miraslab.memory.gate_projections import GateProjections
from miraslab.memory.rule.build import build_rule
from miraslab.memory.rule.memory_rule import MemoryRule
from miraslab.params import make_component
from miraslab.registry import get_registry

MEMORIES = ("linear", "mlp", "gated_mlp")
BIASES = ("l2", "lp", "huber", "dot", "omega")
RETENTIONS = ("none", "decay", "lq_norm", "kl", "elastic_net")
ALGORITHMS = ("gd", "momentum", "muon")
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
    return build_rule(
        component("memory", memory, **options.get("memory", {})),
        component("bias", bias, **options.get("bias", {})),
        component("retention", retention, **options.get("retention", {})),
        component("algorithm", algorithm, **options.get("algorithm", {})),
        heads=heads,
        d_key=d_key or d,
        d_value=d,
        channelwise={
            *channelwise,
            *(["lr"] if channelwise_lr else []),
            *(["window"] if channelwise_window else []),
        },
    ).double()


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


def tokens(q, k, v, gates, part: slice):
    """q, k, v and every gate restricted to the tokens ``part`` (dimension 2), in memory_op's order."""
    return q[:, :, part], k[:, :, part], v[:, :, part], {n: g[:, :, part] for n, g in gates.items()}


def random_inputs(
    rule: MemoryRule,
    batch: int = 2,
    seq: int = 9,
    d: int = 4,
    d_key: int | None = None,
    seed: int = 0,
    requires_grad: bool = False,
):
    """Unit-norm q and k, random v, and gates from a random projection of random inputs."""
    generator = torch.Generator().manual_seed(seed)
    heads = rule.arch.heads
    d_key = d_key or d
    dim = 8
    gates_module = GateProjections(dim, heads, rule.gate_defs(), d, rank=2).double()
    x = torch.randn(batch, seq, dim, generator=generator, dtype=torch.double)
    q = F.normalize(torch.randn(batch, heads, seq, d_key, generator=generator, dtype=torch.double), dim=-1)
    k = F.normalize(torch.randn(batch, heads, seq, d_key, generator=generator, dtype=torch.double), dim=-1)
    v = torch.randn(batch, heads, seq, d, generator=generator, dtype=torch.double)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_()
    return q, k, v, gates_module(x), gates_module
