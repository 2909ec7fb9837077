"""What the memory checks run on: a rule named by its four axes, and random float64 inputs for it.

Shapes are tiny on purpose (2 heads of width 4, batch 2, about ten tokens): the contracts are
exact identities, so a small case catches what a large one does, in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from .. import api
from ..registry import Registry, get_registry

AXES = ("memory", "bias", "retention", "algorithm")
Named = str | Mapping[str, Any]  # "decay", or {"name": "decay", "init_bias": 2.0}


def split_named(value: Named) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        return value, {}
    table = dict(value)
    return table.pop("name"), table


def describe(value: Named) -> str:
    """``omega[window=3]``: a component and the options it is checked at."""
    name, options = split_named(value)
    return name + "".join(f"[{k}={v}]" for k, v in sorted(options.items()))


@attrs.frozen
class RuleCase:
    """One memory rule: a component per Miras axis (a name or a {"name": ..., options} table),
    the channel-wise gates, and the head count and width it is built at."""

    memory: Named = "linear"
    bias: Named = "l2"
    retention: Named = "decay"
    algorithm: Named = "momentum"
    channelwise: tuple[str, ...] = ()
    heads: int = 2
    d: int = 4

    @property
    def id(self) -> str:
        parts = [describe(getattr(self, axis)) for axis in AXES]
        return "-".join(parts) + "".join(f"+{c}" for c in self.channelwise)

    def with_axis(self, axis: str, value: Named) -> RuleCase:
        return attrs.evolve(self, **{axis: value})

    def build(self, registry: Registry | None = None) -> Any:
        """The rule in float64; a combination the engine refuses raises ``RecipeError``."""
        registry = registry or get_registry()
        components = {
            axis: api.make_component(axis, *split_named(getattr(self, axis)), registry) for axis in AXES
        }
        with api.use_registry(registry):
            gates = api.GatesSpec(**{f"channelwise_{role}": True for role in self.channelwise})
            rule = api.build_rule(api.MemorySpec(**components, gates=gates), self.heads, self.d, self.d)
        return rule.double()


def tokens(q, k, v, gates, part: slice):
    """q, k, v and every gate restricted to the tokens ``part`` (dimension 2), in memory_op's order."""
    return q[:, :, part], k[:, :, part], v[:, :, part], {n: g[:, :, part] for n, g in gates.items()}


def random_inputs(
    rule: Any,
    batch: int = 2,
    seq: int = 9,
    d: int | None = None,
    d_key: int | None = None,
    seed: int = 0,
    requires_grad: bool = False,
    scale: float = 1.0,
):
    """Unit-norm q and k (times ``scale``), random v (times ``scale``), and gates from a random
    projection of random inputs: ``(q, k, v, gates, gate_projections)``, all float64."""
    generator = torch.Generator().manual_seed(seed)
    heads = rule.arch.heads
    d = d or rule.arch.d_out
    d_key = d_key or rule.arch.d_in
    dim = 8
    with torch.random.fork_rng():  # the gate projections' initialisation, leaving the caller's RNG alone
        torch.manual_seed(seed)
        gates_module = api.GateProjections(dim, heads, rule.gate_defs(), d, rank=2).double()
    x = torch.randn(batch, seq, dim, generator=generator, dtype=torch.double)

    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.double), dim=-1)

    q = scale * unit(batch, heads, seq, d_key)
    k = scale * unit(batch, heads, seq, d_key)
    v = scale * torch.randn(batch, heads, seq, d, generator=generator, dtype=torch.double)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_()
    return q, k, v, gates_module(x), gates_module
