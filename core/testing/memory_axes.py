"""The kit for the memory axes: a whole rule, one component of an axis, and a feature map.

``check_rule(case)`` holds one combination to every contract of the engine.  ``check_axis(kind,
name)`` puts a component of one axis into the rules ``PARTNERS`` spell out (the other axes'
plain built-ins), at its defaults and at a few option values read from its params, and, for a
bias, compares its ``gradient()`` with autograd of its ``loss()`` at several input scales.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from .. import api
from ..errors import MiraslabError
from ..registry import Registry, get_registry
from . import memory_paths as paths
from .failure import KitFailure, expect_close
from .inner_gradients import check_bias_gradient, check_inner_factors
from .memory_inputs import AXES, RuleCase, describe, split_named
from .options import option_variants
from .references import NO_REFERENCE, REFERENCE_TOLERANCE, check_reference, has_reference, why_not_referenced

# the rules a component is checked inside: a matrix memory with decay and momentum (the batched
# matrix path), and a deep memory with plain gradient steps (the general path, nothing to forget)
PARTNERS = (
    RuleCase("linear", "l2", "decay", "momentum"),
    RuleCase("mlp", "l2", "none", "gd"),
)
RULE_CHECKS = (
    paths.check_paths_agree,
    paths.check_decode_continues,
    paths.check_short_sequence,
    paths.check_gradients_reach,
    check_inner_factors,
    paths.check_finite,
)


REFERENCE_METHOD = {"algorithm": "reference_step", "bias": "reference_gradient"}


@attrs.frozen
class AxisReport:
    """What ``check_axis`` ran: the rules (each with the options it was built at) it checked, the
    ones the engine refused (with why), the rules it held to the component's own reference
    (``check_reference``), and ``reference``: one line saying which, or plainly that the
    component has none ("consistency only: no reference_step")."""

    checked: list[str]
    refused: dict[str, str]
    referenced: list[str] = attrs.field(factory=list)
    reference: str = NO_REFERENCE

    def __str__(self) -> str:
        lines = [f"checked {case}" for case in self.checked]
        lines += [f"refused {case}: {why}" for case, why in self.refused.items()]
        return "\n".join([*lines, self.reference])


def check_rule(case: RuleCase, registry: Registry | None = None) -> None:
    """Every contract of the engine for one combination of the four axes (``RULE_CHECKS``)."""
    rule = case.build(registry)
    for check in RULE_CHECKS:
        check(rule, what=case.id)


def check_axis(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    partners: tuple[RuleCase, ...] = PARTNERS,
    variants: int = 3,
) -> AxisReport:
    """``name`` of axis ``kind`` (memory, bias, retention or algorithm) at ``options`` and at up
    to ``variants`` option values changed one at a time, inside every partner rule that accepts it.

    Fails when no partner accepts the component at its defaults (say which rule to use with
    ``partners=``); a variant or partner the engine refuses with a reason is reported, not failed.
    """
    if kind not in AXES:
        raise ValueError(f"check_axis checks one of {', '.join(AXES)}; got {kind!r} (see check_features)")
    registry = registry or get_registry()
    base = dict(options or {})
    checked: list[str] = []
    refused: dict[str, str] = {}
    referenced: list[str] = []
    left_out: dict[str, str] = {}
    accepted: list[RuleCase] = []
    for partner in partners:
        case = partner.with_axis(kind, {"name": name, **base})
        if _run(case, registry, refused, kind, referenced, left_out):
            checked.append(case.id)
            accepted.append(case)
    if not accepted:
        raise KitFailure(
            f"{kind} {name!r}: every partner rule refused it ({'; '.join(refused.values())}); "
            "pass partners= with a rule it belongs in"
        )
    for variant in option_variants(kind, name, variants, registry)[1:]:
        table = {"name": name, **base, **variant}
        if kind == "bias":
            _check_bias(table, registry, refused)
        case = accepted[0].with_axis(kind, table)
        if _run(case, registry, refused, kind, referenced, left_out):
            checked.append(case.id)
    if kind == "bias":
        _check_bias({"name": name, **base}, registry, refused)
    return AxisReport(checked, refused, referenced, _reference_line(kind, name, referenced, left_out))


def _run(
    case: RuleCase,
    registry: Registry,
    refused: dict[str, str],
    kind: str = "",
    referenced: list | None = None,
    left_out: dict[str, str] | None = None,
) -> bool:
    """Build ``case`` and run every rule check on it; when the component of axis ``kind`` has a
    reference, also hold the engine to it and record ``case.id`` in ``referenced`` (or in ``left_out``,
    with why the reference loop cannot run that rule)."""
    try:
        rule = case.build(registry)
    except (MiraslabError, ValueError) as exc:  # a combination the engine refuses, with its reason
        refused[case.id] = str(exc)
        return False
    for check in RULE_CHECKS:
        check(rule, what=case.id)
    component = getattr(rule, kind, None)
    if referenced is not None and has_reference(kind, component):
        reason = why_not_referenced(rule)
        if reason is None:
            check_reference(rule, what=case.id)
            referenced.append(case.id)
        elif left_out is not None:
            left_out[case.id] = reason
    return True


def _reference_line(kind: str, name: str, referenced: list[str], left_out: dict[str, str]) -> str:
    method = REFERENCE_METHOD.get(kind)
    if method is None:
        return f"{NO_REFERENCE} (a {kind} has no reference hook)"
    if not referenced and left_out:
        return f"consistency only: its {method} was not run, {next(iter(left_out.values()))}"
    if not referenced:
        return NO_REFERENCE if method == "reference_step" else f"consistency only: no {method}"
    return (
        f"{kind} {name!r}: the recurrent path held to its {method} "
        f"(tolerance {REFERENCE_TOLERANCE:g}) in {', '.join(referenced)}"
    )


def _check_bias(table: dict[str, Any], registry: Registry, refused: dict[str, str]) -> None:
    name, options = split_named(table)
    what = describe(table)
    try:
        bias = registry.get("bias", name).build(api.make_component("bias", name, options, registry).params)
    except (MiraslabError, ValueError) as exc:
        refused[f"bias {what}"] = str(exc)
        return
    check_bias_gradient(bias, what=f"bias {what}")


# --- feature maps, and the memory layer around a rule --------------------------------------


def check_memory_layer(
    dim: int = 8,
    heads: int = 2,
    seq: int = 11,
    chunk: int = 4,
    registry: Registry | None = None,
    **components: Any,
) -> None:
    """The public ``MemoryLayer`` (projections, convolution, feature map, rule, read-out) in
    float64 with ``components`` (memory=, bias=, retention=, algorithm=, features=, as names or
    tables): chunked == recurrent at chunk 1 and ``chunk``, decoding token by token continues a
    chunked state, no output sees a later token, and the loss reaches every parameter."""
    what = "MemoryLayer.from_options(" + ", ".join(f"{k}={v!r}" for k, v in components.items()) + ")"

    def layer(chunk_size: int) -> Any:
        torch.manual_seed(0)
        with api.use_registry(registry or api.get_registry()):
            return api.MemoryLayer.from_options(dim, heads, chunk_size=chunk_size, **components).double()

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, seq, dim, generator=generator, dtype=torch.double)
    for size in (1, chunk):
        model = layer(size)
        expect_close(
            f"{what}, chunk {size}: chunked vs recurrent",
            model(x),
            model(x, path="recurrent"),
            paths.PATH_TOLERANCE,
        )
    model = layer(chunk)
    full = model(x)
    prefix = chunk + 1
    out, state = model(x[:, :prefix], return_state=True)
    pieces = [out]
    for t in range(prefix, seq):
        out, state = model(x[:, t : t + 1], state=state, return_state=True, path="recurrent")
        pieces.append(out)
    expect_close(
        f"{what}: decoding token by token vs one call", torch.cat(pieces, 1), full, paths.PATH_TOLERANCE
    )
    changed = x.clone()
    changed[:, prefix] += 1.0
    expect_close(f"{what}: outputs before a changed token", model(changed)[:, :prefix], full[:, :prefix], 0.0)
    model.zero_grad(set_to_none=True)
    full.pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if missing:
        raise KitFailure(f"{what}: the loss does not reach {', '.join(missing)}")


FEATURE_PARTNERS = ({"memory": "linear"}, {"memory": {"name": "mlp", "residual": False}, "algorithm": "gd"})


def check_features(
    name: str, options: Mapping[str, Any] | None = None, registry: Registry | None = None, variants: int = 2
) -> list[str]:
    """A feature map phi: its output width is ``out_dim``, it acts per token, and inside the memory
    layer (``check_memory_layer``, with a matrix and a deep memory) every contract holds, at its
    defaults and at a few option values.  Returns what it checked."""
    registry = registry or get_registry()
    checked = []
    for variant in option_variants("features", name, variants, registry):
        table = {"name": name, **dict(options or {}), **variant}
        what = describe(table)
        params = api.make_component(
            "features", name, {k: v for k, v in table.items() if k != "name"}, registry
        )
        phi = registry.get("features", name).build(params.params, dim=4).double()
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, 2, 6, 4, generator=generator, dtype=torch.double)
        for query in (False, True):
            y = phi(x, query=query)
            if y.shape != (*x.shape[:-1], phi.out_dim):
                raise KitFailure(
                    f"features {what}: output {tuple(y.shape)}, expected out_dim {phi.out_dim} last"
                )
            one = torch.cat([phi(x[:, :, t : t + 1], query=query) for t in range(x.shape[2])], dim=2)
            expect_close(f"features {what}: token by token vs all at once", one, y, paths.PATH_TOLERANCE)
        for partner in FEATURE_PARTNERS:
            check_memory_layer(registry=registry, features=table, **partner)
            checked.append(f"{what} with {partner}")
    return checked
