"""Recipe files: TOML, extends chains, merging, --set overrides, and their one-line errors."""

from __future__ import annotations

import pytest

from miraslab.errors import RecipeError
from miraslab.recipe.loading import load_raw, parse_set


def problems(excinfo) -> list[str]:
    return excinfo.value.problems


def test_extends_chains_merge_tables_key_by_key_and_later_wins(write_recipe):
    write_recipe(
        "base/root.toml",
        """
        [model]
        d_model = 64
        n_layers = 2
        [train]
        betas = [0.9, 0.95]
    """,
    )
    write_recipe(
        "base/lm.toml",
        """
        extends = "root.toml"
        [model]
        n_layers = 4
    """,
    )
    top = write_recipe(
        "x.toml",
        """
        extends = "base/lm.toml"
        [model]
        d_model = 128
        [train]
        betas = [0.8]
    """,
    )
    data, origins = load_raw(top)
    assert data["model"] == {"d_model": 128, "n_layers": 4}
    assert data["train"]["betas"] == [0.8]  # lists replace
    assert origins[("model", "n_layers")].endswith("lm.toml")
    assert origins[("model", "d_model")].endswith("x.toml")


def test_a_component_string_gains_options_from_a_later_table(write_recipe):
    write_recipe("base.toml", 'retention = "decay"\n')
    top = write_recipe("x.toml", 'extends = "base.toml"\nretention = { init = 0.9 }\n')
    assert load_raw(top)[0]["retention"] == {"name": "decay", "init": 0.9}


def test_naming_a_different_component_drops_the_old_components_options(write_recipe):
    write_recipe("base.toml", 'bias = { name = "huber", delta = 2.0 }\n')
    top = write_recipe("x.toml", 'extends = "base.toml"\nbias = { name = "omega", window = 4 }\n')
    assert load_raw(top)[0]["bias"] == {"name": "omega", "window": 4}
    data, _ = load_raw(write_recipe("y.toml", 'extends = "base.toml"\n'), ["bias.name=l2"])
    assert data["bias"] == {"name": "l2"}


def test_set_values_are_toml_and_create_tables(write_recipe):
    path = write_recipe("x.toml", "[model]\nd_model = 64\n")
    data, origins = load_raw(
        path,
        [
            "model.d_model=256",
            "train.lr=3e-4",
            'model.memory.bias.name="omega"',
            "model.memory.bias.window=16",
            "train.betas=[0.9, 0.99]",
            "model.memory.qk_projection=true",
        ],
    )
    assert data["model"]["d_model"] == 256
    assert data["train"] == {"lr": 3e-4, "betas": [0.9, 0.99]}
    assert data["model"]["memory"] == {"bias": {"name": "omega", "window": 16}, "qk_projection": True}
    assert origins[("train", "lr")] == "--set"


def test_set_takes_a_bare_word_as_a_string_because_the_shell_ate_the_quotes():
    assert parse_set("model.memory.bias.name=omega") == (("model", "memory", "bias", "name"), "omega")
    assert parse_set("model.memory.bias.window=16x") == (("model", "memory", "bias", "window"), "16x")


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("model.d_model", "expected dotted.key=value"),
        ("=3", "expected dotted.key=value"),
        ("model..d_model=3", "has an empty part"),
        ("train.betas=[0.9,", "is not valid TOML"),
    ],
)
def test_a_bad_set_is_one_clear_line(assignment, message):
    with pytest.raises(RecipeError) as info:
        parse_set(assignment)
    assert len(problems(info)) == 1 and message in problems(info)[0]
    assert problems(info)[0].startswith(f"--set {assignment}")


def test_set_through_a_value_that_is_not_a_table_is_refused(write_recipe):
    path = write_recipe("x.toml", "[train]\nlr = 0.1\n")
    with pytest.raises(RecipeError) as info:
        load_raw(path, ["train.lr.x=1"])
    assert problems(info) == ["--set train.lr.x=1: train.lr is a number, not a table"]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_raw(tmp_path / "nope.toml")
    assert problems(info)[0].endswith("nope.toml: no such recipe file")


def test_invalid_toml_reports_line_and_column(write_recipe):
    path = write_recipe("bad.toml", "[model]\nd_model = = 3\n")
    with pytest.raises(RecipeError) as info:
        load_raw(path)
    (line,) = problems(info)
    assert "bad.toml: invalid TOML:" in line and "line 2, column" in line


def test_an_extends_cycle_is_named_with_its_chain(write_recipe):
    write_recipe("a.toml", 'extends = "b.toml"\n')
    write_recipe("b.toml", 'extends = "a.toml"\n')
    with pytest.raises(RecipeError) as info:
        load_raw(write_recipe("a.toml", 'extends = "b.toml"\n'))
    (line,) = problems(info)
    assert "extends cycle: " in line and line.count("a.toml") >= 2 and "b.toml" in line


def test_extends_of_a_missing_file_names_the_file_that_asked(write_recipe):
    path = write_recipe("x.toml", 'extends = "base/nope.toml"\n')
    with pytest.raises(RecipeError) as info:
        load_raw(path)
    assert "x.toml: extends: no such file 'base/nope.toml'" in problems(info)[0]
