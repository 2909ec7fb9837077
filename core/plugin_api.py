"""The version of the plugin API, and the version ranges plugins declare against it.

``PLUGIN_API_VERSION`` is ``"MAJOR.MINOR"``.  The major number goes up when something a
plugin relies on changes incompatibly: a hookspec's name or arguments, a factory's keyword
context, a name of ``miraslab.api`` removed or changed in meaning.  The minor number goes up
when something is only added (a hook, a name in ``miraslab.api``, a keyword with a default).

A plugin module declares the range it supports as a module attribute::

    MIRASLAB_PLUGIN_API = ">=1.0,<2"

Clauses are ``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=`` or ``~=`` followed by a version of
one to three numbers, separated by commas.  Stdlib only: ``import miraslab`` stays cheap.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable

PLUGIN_API_VERSION = "1.0"
ATTRIBUTE = "MIRASLAB_PLUGIN_API"

_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|~=|>|<)\s*(\d+(?:\.\d+){0,2})\s*$")
_OPERATORS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(part) for part in text.split(".")]
    return (*parts, 0, 0, 0)[:3]  # type: ignore[return-value]  # "1" == "1.0" == "1.0.0"


def supports(spec: str, version: str = PLUGIN_API_VERSION) -> bool:
    """Whether ``version`` lies in the range ``spec``; ValueError names a malformed clause."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{spec!r} is not a version range such as '>=1.0,<2'")
    have = _version(version)
    for clause in spec.split(","):
        match = _CLAUSE.match(clause)
        if match is None:
            raise ValueError(f"{clause.strip()!r} in {spec!r} is not a clause such as '>=1.0' or '<2'")
        op, bound = match.groups()
        if op == "~=":  # compatible release: ~=1.2 is >=1.2,<2; ~=1.2.3 is >=1.2.3,<1.3
            if "." not in bound:
                raise ValueError(f"{clause.strip()!r} in {spec!r}: '~=' needs at least two numbers")
            numbers = [int(part) for part in bound.split(".")]
            upper = (*numbers[:-2], numbers[-2] + 1, 0, 0)[:3]
            if not (have >= _version(bound) and have < upper):
                return False
        elif not _OPERATORS[op](have, _version(bound)):
            return False
    return True
