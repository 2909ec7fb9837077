"""Writing plain data as TOML (tomllib only reads).

Scalars and arrays of scalars become ``key = value`` lines, tables become ``[section]``
headers and arrays of tables ``[[section]]``; ``None`` values are left out, since TOML
has no null and every optional recipe key defaults to ``None``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps(data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _table(data, (), lines)
    return "\n".join(lines).strip() + "\n"


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(data: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    simple = {
        k: v
        for k, v in data.items()
        if v is not None and not isinstance(v, Mapping) and not _is_table_array(v)
    }
    for key, value in simple.items():
        lines.append(f"{_key(key)} = {value_to_toml(value)}")
    for key, value in data.items():
        if isinstance(value, Mapping):
            header = ".".join(_key(p) for p in (*path, key))
            lines.extend(["", f"[{header}]"])
            _table(value, (*path, key), lines)
        elif _is_table_array(value):
            header = ".".join(_key(p) for p in (*path, key))
            for item in value:
                lines.extend(["", f"[[{header}]]"])
                _table(item, (*path, key), lines)


def value_to_toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_to_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {value_to_toml(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
