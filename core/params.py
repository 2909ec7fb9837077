"""Component parameters: attrs classes, structured from recipe tables with cattrs.

A component declares a frozen attrs class whose fields use :func:`param` for their range
or choices.  A recipe table is structured into that class by a strict cattrs converter
(no silent ``"16" -> 16``; unknown keys forbidden), and every problem becomes one line
``dotted.key: expected <what>, got <value>``.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any, ClassVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .errors import MiraslabError, RegistryError

# --- declaring parameters ------------------------------------------------------------


class ParamValueError(ValueError):
    """A value outside what a parameter accepts; ``field`` is relative to its class."""

    def __init__(self, field: str | None, expected: str, got: Any):
        self.field = field
        self.expected = expected
        self.got = got
        where = f"{field}: " if field else ""
        super().__init__(f"{where}expected {expected}, got {format_value(got)}")


class TypeMismatch(ValueError):
    def __init__(self, expected: str, got: Any):
        self.expected = expected
        self.got = got
        super().__init__(f"expected {expected}, got {format_value(got)}")


@attrs.frozen
class Check:
    """An attrs validator that knows how to say what it expected."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None

    def describe(self, type_name: str) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(format_value(c) for c in self.choices)
        lower = (">=", self.ge) if self.ge is not None else (">", self.gt) if self.gt is not None else None
        upper = ("<=", self.le) if self.le is not None else ("<", self.lt) if self.lt is not None else None
        if lower and upper:
            left = "[" if lower[0] == ">=" else "("
            right = "]" if upper[0] == "<=" else ")"
            return f"{type_name} in {left}{_num(lower[1])}, {_num(upper[1])}{right}"
        if lower:
            return f"{type_name} {lower[0]} {_num(lower[1])}"
        if upper:
            return f"{type_name} {upper[0]} {_num(upper[1])}"
        return type_name

    def ok(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if math.isnan(value):
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and _allows_none(attribute.type):
            return
        items = value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            if not self.ok(item):
                expected = self.describe(_type_phrase(attribute.type))
                raise ParamValueError(attribute.name, expected, value)


def param(
    default: Any = attrs.NOTHING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | list[Any] | None = None,
    doc: str = "",
    factory: Callable[[], Any] | None = None,
    key: str | None = None,
) -> Any:
    """An attrs field with a range or a set of choices, and a line of documentation.

    ``key`` is the recipe's name for the field when it cannot be a Python name (``from``).
    """
    check = None
    if any(v is not None for v in (ge, gt, le, lt)) or choices is not None:
        check = Check(ge, gt, le, lt, tuple(choices) if choices is not None else None)
    metadata = {"doc": doc, **({"key": key} if key else {})}
    if factory is not None:
        return attrs.field(factory=factory, validator=check, metadata=metadata)
    return attrs.field(default=default, validator=check, metadata=metadata)


def key_of(field: attrs.Attribute) -> str:
    """The key a recipe table spells ``field`` with."""
    return field.metadata.get("key", field.name)


def _renamed(cls: type) -> dict[str, str]:
    """Attribute name -> recipe key, for the fields of ``cls`` whose key is not their name."""
    return {f.name: key_of(f) for f in attrs.fields(cls) if key_of(f) != f.name}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _allows_none(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _type_phrase(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        inner = typing.get_args(tp)
        return (
            "a list of " + _type_phrase(inner[0]).removeprefix("an ").removeprefix("a ") + "s"
            if inner
            else "a list"
        )
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, "a value")


def format_value(value: Any) -> str:
    """A value as it would be written in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return repr(value)


# --- components inside recipes ---------------------------------------------------------


@attrs.frozen
class Component:
    """A named component of one kind with its structured ``params``."""

    kind: ClassVar[str] = ""
    name: str
    params: Any

    def __attrs_post_init__(self) -> None:
        if not self.kind:
            raise TypeError("use component_type(kind), not Component itself")


@cache
def component_type(kind: str) -> type[Component]:
    """The Component subclass for ``kind`` (a distinct type lets cattrs know the kind)."""
    return types.new_class(f"{kind.title()}Component", (Component,), {}, lambda ns: ns.update(kind=kind))


def component_field(kind: str, default: str | None, doc: str = "") -> Any:
    """A recipe field holding a component of ``kind``; a bare string is its name."""
    if default is None:
        return attrs.field(default=None, metadata={"doc": doc, "component": kind})

    def make() -> Component:
        from .registry import get_registry

        return make_component(kind, default, {}, get_registry())

    return attrs.field(factory=make, metadata={"doc": doc, "component": kind})


def make_component(kind: str, name: str, table: Mapping[str, Any], registry: Any) -> Component:
    info = registry.get(kind, name)
    converter = make_converter(registry)
    return component_type(kind)(name, structure_with(converter, dict(table), info.params))


# --- the strict converter ----------------------------------------------------------------


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeMismatch("an integer", value)
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeMismatch("a number", value)
    return float(value)


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeMismatch("true or false", value)
    return value


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeMismatch("a string", value)
    return value


def make_converter(registry: Any) -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(str, _strict_str)

    def is_component(tp: Any) -> bool:
        return isinstance(tp, type) and issubclass(tp, Component) and tp is not Component

    def structure_component(value: Any, tp: type[Component]) -> Component:
        kind = tp.kind
        if isinstance(value, tp):  # already structured (a Component passed without a recipe)
            return value
        if isinstance(value, str):
            name, table = value, {}
        elif isinstance(value, Mapping):
            table = dict(value)
            if "name" not in table:
                raise TypeMismatch(f"a {kind} name or a table with a 'name' key", value)
            name = table.pop("name")
            if not isinstance(name, str):
                raise _AtKey("name", TypeMismatch(f"a {kind} name", name))
        else:
            raise TypeMismatch(f"a {kind} name or a table with a 'name' key", value)
        try:
            info = registry.get(kind, name)
        except RegistryError as exc:
            raise _AtKey("name", exc) from None
        return tp(name, converter.structure(table, info.params))

    def unstructure_component(value: Component) -> dict[str, Any]:
        return {"name": value.name, **converter.unstructure(value.params)}

    converter.register_structure_hook_func(is_component, structure_component)
    converter.register_unstructure_hook_func(is_component, unstructure_component)

    def has_renamed_keys(tp: Any) -> bool:
        return isinstance(tp, type) and attrs.has(tp) and bool(_renamed(tp))

    def structure_renamed(cls: type) -> Callable[[Any, type], Any]:
        renames = {name: override(rename=key) for name, key in _renamed(cls).items()}
        return make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True, **renames)

    def unstructure_renamed(cls: type) -> Callable[[Any], Any]:
        renames = {name: override(rename=key) for name, key in _renamed(cls).items()}
        return make_dict_unstructure_fn(cls, converter, **renames)

    converter.register_structure_hook_factory(has_renamed_keys, structure_renamed)
    converter.register_unstructure_hook_factory(has_renamed_keys, unstructure_renamed)

    def is_sequence(tp: Any) -> bool:  # TOML arrays arrive as lists; strings are not lists
        return typing.get_origin(tp) in (tuple, list)

    def structure_sequence(value: Any, tp: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise TypeMismatch("a list", value)
        item_type = (typing.get_args(tp) or (Any,))[0]
        items = []
        errors = []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, item_type))
            except Exception as exc:
                errors.append(_AtKey(f"[{index}]", exc))
        if errors:
            raise _Grouped(errors)
        return tuple(items) if typing.get_origin(tp) is tuple else items

    converter.register_structure_hook_func(is_sequence, structure_sequence)
    return converter


class _AtKey(Exception):
    """An error located at a sub-key of the value being structured."""

    def __init__(self, key: str, error: Exception):
        self.key = key
        self.error = error
        super().__init__(str(error))


class _Grouped(Exception):
    def __init__(self, errors: list[Exception]):
        self.errors = errors
        super().__init__("; ".join(map(str, errors)))


# --- structuring with readable errors ---------------------------------------------------


class ParamsError(MiraslabError):
    """Problems structuring a table: ``(path parts, message)`` pairs."""

    def __init__(self, problems: list[tuple[tuple[str, ...], str]]):
        self.problems = problems
        super().__init__("\n".join(f"{join_path(p)}: {m}" if p else m for p, m in problems))


def structure_with(converter: cattrs.Converter, data: Any, cls: type) -> Any:
    """Structure ``data`` into ``cls``; raise ParamsError listing every problem."""
    attrs.resolve_types(cls)
    with attrs.validators.disabled():  # validators run below, so every problem is reported
        try:
            value = converter.structure(data, cls)
        except Exception as exc:
            raise ParamsError(sorted(set(_flatten(exc, ())), key=_problem_order)) from None
    problems = list(_validate(value, ()))
    if problems:
        raise ParamsError(problems)
    return value


def structure(data: Any, cls: type) -> Any:
    from .registry import get_registry

    return structure_with(make_converter(get_registry()), data, cls)


def unstructure(value: Any) -> Any:
    from .registry import get_registry

    return make_converter(get_registry()).unstructure(value)


def _problem_order(problem: tuple[tuple[str, ...], str]) -> tuple[str, ...]:
    return problem[0]


def join_path(path: tuple[str, ...]) -> str:
    """("model", "stages", "[0]", "steps") -> "model.stages[0].steps"."""
    out = ""
    for part in path:
        out += part if part.startswith("[") or not out else "." + part
    return out


def _flatten(exc: BaseException, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(exc, ClassValidationError):
        with_notes, others = exc.group_exceptions()
        for sub, note in with_notes:
            field = attrs.fields_dict(exc.cl).get(str(note.name)) if attrs.has(exc.cl) else None
            key = key_of(field) if field is not None else str(note.name)
            if isinstance(sub, TypeMismatch) and field is not None and isinstance(field.validator, Check):
                expected = field.validator.describe(_type_phrase(field.type))  # say the range too
                yield (*path, key), f"expected {expected}, got {format_value(sub.got)}"
                continue
            yield from _flatten(sub, (*path, key))
        for sub in others:
            yield from _flatten(sub, path)
    elif isinstance(exc, IterableValidationError):
        with_notes, others = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _flatten(sub, (*path, f"[{note.index}]"))
        for sub in others:
            yield from _flatten(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        allowed = ", ".join(key_of(a) for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else ""
        for key in sorted(exc.extra_fields):
            hint = f"; allowed keys: {allowed}" if allowed else "; this table takes no keys"
            yield (*path, key), f"unknown key{hint}"
    elif isinstance(exc, _AtKey):
        yield from _flatten(exc.error, (*path, exc.key))
    elif isinstance(exc, _Grouped):
        for sub in exc.errors:
            yield from _flatten(sub, path)
    elif isinstance(exc, ParamValueError):
        where = (*path, exc.field) if exc.field else path
        yield where, f"expected {exc.expected}, got {format_value(exc.got)}"
    elif isinstance(exc, TypeMismatch):
        yield path, str(exc)
    elif isinstance(exc, KeyError):
        yield path, "missing required key"
    elif isinstance(exc, MiraslabError):
        yield path, str(exc)
    else:
        yield path, f"{type(exc).__name__}: {exc}"


def _validate(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """Run every attrs validator of ``value`` and what it contains, collecting failures."""
    if isinstance(value, Component):
        yield from _validate(value.params, path)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _validate(item, (*path, f"[{index}]"))
        return
    if not attrs.has(type(value)):
        return
    failed = False
    for field in attrs.fields(type(value)):
        item = getattr(value, field.name)
        if field.validator is not None:
            try:
                field.validator(value, field, item)
            except ParamValueError as exc:
                failed = True
                yield (*path, key_of(field)), f"expected {exc.expected}, got {format_value(exc.got)}"
                continue
        for problem in _validate(item, (*path, key_of(field))):
            failed = True
            yield problem
    cross_check = getattr(value, "cross_check", None)
    # rules across fields assume each field is valid (n_heads >= 1 before d_model // n_heads)
    if callable(cross_check) and not failed:  # cross_check() raises ParamValueError
        try:
            cross_check()
        except ParamValueError as exc:
            where = (*path, exc.field) if exc.field else path
            yield where, f"expected {exc.expected}, got {format_value(exc.got)}"
        except MiraslabError as exc:
            yield path, str(exc)


def params_doc(cls: type) -> list[dict[str, Any]]:
    """Each field of a params class: name, type, default and documentation."""
    attrs.resolve_types(cls)
    out = []
    for field in attrs.fields(cls):
        if field.default is attrs.NOTHING:
            default: Any = None
            required = True
        else:
            required = False
            default = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default
            if isinstance(default, Component):
                default = {"name": default.name}
            elif attrs.has(type(default)):
                default = attrs.asdict(default)
            elif isinstance(default, tuple):
                default = list(default)
        check = field.validator if isinstance(field.validator, Check) else None
        type_text = _type_phrase(field.type)
        out.append(
            {
                "name": key_of(field),
                "type": check.describe(type_text) if check else type_text,
                "default": default,
                "required": required,
                "doc": field.metadata.get("doc", ""),
            }
        )
    return out
