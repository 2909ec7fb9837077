"""Component params: attrs classes structured with cattrs, strictly, with readable errors."""

from __future__ import annotations

import attrs
import pytest

import miraslab
from miraslab.memory.spec import BiasComponent
from miraslab.params import ParamsError, ParamValueError, component_field, join_path, params_doc, structure


@attrs.frozen
class Inner:
    window: int = miraslab.param(16, ge=1, doc="a window")
    rate: float = miraslab.param(0.5, gt=0, le=1)
    mode: str = miraslab.param("fast", choices=("fast", "exact"))
    flag: bool = False
    sizes: tuple[int, ...] = miraslab.param(factory=lambda: (1, 2), ge=1)


@attrs.frozen
class Outer:
    steps: int = miraslab.param(ge=1)
    inner: Inner = attrs.field(factory=Inner)
    bias: BiasComponent = component_field("bias", "l2")

    def cross_check(self) -> None:
        if self.steps < self.inner.window:
            raise ParamValueError("steps", f"at least inner.window ({self.inner.window})", self.steps)


def errors(data, cls=Outer) -> list[str]:
    with pytest.raises(ParamsError) as info:
        structure(data, cls)
    return [f"{join_path(path)}: {message}" for path, message in info.value.problems]


def test_a_valid_table_structures_with_defaults_filled_in():
    value = structure({"steps": 20, "inner": {"window": 4}, "bias": {"name": "omega", "window": 8}}, Outer)
    assert value.inner == Inner(window=4)
    assert value.bias.name == "omega" and value.bias.params.window == 8
    assert value.bias.params.inner.name == "l2"


def test_a_component_may_be_a_bare_name():
    assert structure({"steps": 20, "bias": "huber"}, Outer).bias.params.delta == 1.0


def test_a_wrong_type_names_the_key_the_expectation_and_the_value():
    assert errors({"steps": 20, "inner": {"window": "16x"}}) == [
        'inner.window: expected an integer >= 1, got "16x"'
    ]


def test_no_silent_conversions_between_types():
    assert errors({"steps": 20, "inner": {"flag": 1}}) == ["inner.flag: expected true or false, got 1"]
    assert errors({"steps": True}) == ["steps: expected an integer >= 1, got true"]
    assert errors({"steps": 2.0}) == ["steps: expected an integer >= 1, got 2.0"]


def test_an_integer_is_accepted_where_a_number_is_expected():
    assert structure({"steps": 20, "inner": {"rate": 1}}, Outer).inner.rate == 1.0


def test_out_of_range_values_say_the_range():
    assert errors({"steps": 20, "inner": {"window": 0, "rate": 1.5}}) == [
        "inner.window: expected an integer >= 1, got 0",
        "inner.rate: expected a number in (0, 1], got 1.5",
    ]


def test_choices_are_listed():
    assert errors({"steps": 20, "inner": {"mode": "slow"}}) == [
        'inner.mode: expected one of "fast", "exact", got "slow"'
    ]


def test_list_items_are_checked():
    assert errors({"steps": 20, "inner": {"sizes": [1, 0]}}) == [
        "inner.sizes: expected a list of integers >= 1, got [1, 0]"
    ]
    assert errors({"steps": 20, "inner": {"sizes": "12"}}) == [
        'inner.sizes: expected a list of integers >= 1, got "12"'
    ]


def test_unknown_keys_are_forbidden_and_the_allowed_ones_listed():
    (line,) = errors({"steps": 20, "inner": {"windw": 3}})
    assert line == "inner.windw: unknown key; allowed keys: window, rate, mode, flag, sizes"


def test_a_missing_required_key_is_named():
    assert errors({}) == ["steps: missing required key"]


def test_component_params_are_validated_like_any_other():
    assert errors({"steps": 20, "bias": {"name": "omega", "window": 0}}) == [
        "bias.window: expected an integer >= 1, got 0"
    ]
    assert errors({"steps": 20, "bias": {"name": "omega", "inner": {"name": "lp", "p": 0.5}}}) == [
        "bias.inner.p: expected a number >= 1, got 0.5"
    ]


def test_an_unknown_component_name_is_reported_at_its_name_key():
    (line,) = errors({"steps": 20, "bias": {"name": "omgea"}})
    assert line.startswith("bias.name: unknown bias 'omgea'; did you mean 'omega'?")


def test_a_component_table_without_a_name_is_refused():
    (line,) = errors({"steps": 20, "bias": {"window": 3}})
    assert line == "bias: expected a bias name or a table with a 'name' key, got a table"


def test_rules_across_fields_are_checked():
    assert errors({"steps": 3}) == ["steps: expected at least inner.window (16), got 3"]


def test_every_problem_is_reported_not_only_the_first():
    assert len(errors({"steps": 20, "inner": {"window": "x", "flag": 2, "extra": 1}})) == 3


def test_params_doc_describes_each_field():
    doc = {p["name"]: p for p in params_doc(Inner)}
    assert doc["window"] == {
        "name": "window",
        "type": "an integer >= 1",
        "default": 16,
        "required": False,
        "doc": "a window",
    }
    assert doc["sizes"]["default"] == [1, 2]
