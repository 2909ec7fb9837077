"""A handful of option values for a component, read from its params class's declared ranges.

A bug that cancels at the default (a factor of a scale option that is 1 by default, a branch
only one setting takes) is invisible there: every check that takes options runs at the
defaults and at these variants, one field changed at a time.
"""

from __future__ import annotations

import math
import typing
from typing import Any

import attrs

from ..params import Check
from ..registry import Registry, get_registry


def option_variants(kind: str, name: str, limit: int = 3, registry: Registry | None = None) -> list[dict]:
    """``{}`` (the defaults) and up to ``limit`` tables that each change one field from its default,
    taking the fields in turn so that every field is varied before any twice."""
    info = (registry or get_registry()).get(kind, name)
    per_field = [
        [{field.name: value} for value in _candidates(field)]
        for field in attrs.fields(info.params)
        if field.default is not attrs.NOTHING
    ]
    variants: list[dict] = []
    for round_ in range(max((len(c) for c in per_field), default=0)):
        for candidates in per_field:
            if round_ < len(candidates) and len(variants) < limit:
                variants.append(candidates[round_])
    return [{}, *variants]


def _candidates(field: attrs.Attribute) -> list[Any]:
    default = field.default
    if isinstance(default, attrs.Factory) or field.metadata.get("component"):
        return []  # a list or another component: the defaults only
    check = field.validator if isinstance(field.validator, Check) else Check()
    if check.choices is not None:
        return [c for c in check.choices if c != default][:2]
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, int) and _is(field, int):
        values = [default + 1, default - 1, 2 * default + 1]
    elif isinstance(default, float):
        values = _floats(default, check)
    else:
        return []
    return [v for v in dict.fromkeys(values) if v != default and check.ok(v)][:2]


def _floats(default: float, check: Check) -> list[float]:
    low = check.ge if check.ge is not None else check.gt
    high = check.le if check.le is not None else check.lt
    if low is not None and high is not None and high - low <= 10:  # a bounded range: inside it
        return [low + 0.25 * (high - low), low + 0.7 * (high - low)]
    if default == 0:
        return [0.3, -0.3]
    values = [default * 1.5, default * 0.5]
    return [v for v in values if math.isfinite(v)]


def _is(field: attrs.Attribute, tp: type) -> bool:
    return field.type is tp or field.type == tp.__name__ or tp in typing.get_args(field.type)
