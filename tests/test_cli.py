"""The ``miraslab`` command line as a user sees it: output, exit codes and error lines.

Most tests call ``miraslab.cli.main([...])`` in-process and read what it printed; a few run
``python -m miraslab`` in a subprocess to check the real exit code and stderr.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import miraslab
from miraslab.cli import main
from miraslab.params import Component
from miraslab.recipe.resolve import load_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
TITANS_MAG = "recipes/papers/titans-mag.toml"
SMALL_SETS = ["model.d_model=256", "model.n_heads=8"]  # titans-mag has 12 heads: 256 needs fewer
SMALL = [arg for assignment in SMALL_SETS for arg in ("--set", assignment)]
KINDS_WITH_BUILTINS = frozenset(
    ("memory", "bias", "retention", "algorithm", "features", "mixer", "layout", "attention", "task")
)


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture
def in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # recipe paths in messages are then short: "bad.toml: ..."
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, out: str, err: str) -> list[str]:
    """Exit 2, nothing on stdout, and stderr is only ``error: ...`` lines (no traceback)."""
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), err
    assert "Traceback" not in err
    return lines


def without_none(value: Any) -> Any:
    """TOML has no null: ``recipe show`` leaves ``None`` keys out of its TOML."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def components_in(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Component]]:
    """Every component of a structured recipe, with its key path (nested ones too)."""
    if isinstance(value, Component):
        yield path, value
        yield from components_in(value.params, path)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from components_in(item, (*path, index))
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from components_in(getattr(value, field.name), (*path, field.name))


def at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


# --- miraslab plugins ---------------------------------------------------------------------


def test_plugins_json_is_a_list_of_components_of_every_kind(capsys):
    code, out, err = run(capsys, "plugins", "--json")
    assert code == 0 and err == ""
    listed = json.loads(out)
    assert isinstance(listed, list)
    for item in listed:
        assert {"kind", "name", "source", "version", "params"} <= set(item), item
        for p in item["params"]:
            assert {"name", "type", "default", "required", "doc"} <= set(p), (item["name"], p)
    assert {item["kind"] for item in listed} >= KINDS_WITH_BUILTINS
    decay = next(i for i in listed if (i["kind"], i["name"]) == ("retention", "decay"))
    assert (decay["source"], decay["version"]) == ("miraslab", miraslab.__version__)


def test_plugins_text_groups_components_under_their_kind_with_source_and_params(capsys):
    code, out, err = run(capsys, "plugins")
    assert code == 0 and err == ""
    lines = out.splitlines()
    headers = [line for line in lines if line and not line.startswith(" ")]
    assert set(headers) >= KINDS_WITH_BUILTINS
    decay = next(line for line in lines if line.startswith("  decay "))
    assert f"miraslab {miraslab.__version__}" in decay
    assert any(re.match(r"^ {6}init = 0\.98  \[a number in \(0, 1\)\]", line) for line in lines)


def test_plugins_kind_lists_only_that_kind(capsys):
    code, out, _ = run(capsys, "plugins", "--kind", "bias", "--json")
    assert code == 0
    assert {item["kind"] for item in json.loads(out)} == {"bias"}


# --- miraslab recipe show / validate --------------------------------------------------------


def test_recipe_show_prints_toml_that_loads_back_to_the_json_output(capsys, in_repo):
    code, toml_out, err = run(capsys, "recipe", "show", TITANS_MAG, *SMALL)
    assert code == 0 and err == ""
    code, json_out, _ = run(capsys, "recipe", "show", TITANS_MAG, *SMALL, "--json")
    assert code == 0
    resolved = json.loads(json_out)
    assert tomllib.loads(toml_out) == without_none(resolved)
    assert resolved["model"]["d_model"] == 256


@pytest.mark.parametrize(
    "recipe, sets",
    [(TITANS_MAG, SMALL_SETS), ("recipes/papers/omeganet.toml", [])],  # omeganet nests a bias in its bias
)
def test_recipe_show_names_every_component_table(capsys, in_repo, recipe, sets):
    _, out, _ = run(capsys, "recipe", "show", recipe, *[a for s in sets for a in ("--set", s)])
    resolved = tomllib.loads(out)
    found = dict(components_in(load_recipe(recipe, sets)))
    assert {("model", "layout"), ("model", "memory", "retention"), ("data", "task")} <= set(found)
    for path, component in found.items():
        table = at(resolved, path)
        assert isinstance(table, dict) and table["name"] == component.name, path


def test_the_shown_recipe_is_itself_a_recipe_that_resolves_to_the_same_data(capsys, in_repo, tmp_path):
    _, shown, _ = run(capsys, "recipe", "show", TITANS_MAG, *SMALL)
    (tmp_path / "resolved.toml").write_text(shown)
    _, again, _ = run(capsys, "recipe", "show", str(tmp_path / "resolved.toml"), "--json")
    _, original, _ = run(capsys, "recipe", "show", TITANS_MAG, *SMALL, "--json")
    assert json.loads(again) == json.loads(original)


def test_recipe_show_params_json_has_the_parameter_count(capsys, in_repo):
    code, out, _ = run(capsys, "recipe", "show", TITANS_MAG, "--params", "--json")
    assert code == 0
    report = json.loads(out)
    assert isinstance(report["param_count"], int) and report["param_count"] > 1_000_000
    assert sum(report["groups"].values()) >= report["param_count"]  # a tied weight counts in two groups


def test_recipe_validate_exits_0_with_a_one_line_summary(capsys, in_repo):
    code, out, err = run(capsys, "recipe", "validate", TITANS_MAG)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"ok: {TITANS_MAG}: titans-mag, layout mag, 12 layers, d_model 768, memory mlp/l2/decay/momentum, "
        "1000 steps"
    ]


# --- errors: exit 2, only "error: " lines --------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return path.name


def test_a_missing_recipe_file(capsys, in_tmp):
    lines = assert_user_error(*run(capsys, "recipe", "validate", "nope.toml"))
    assert lines == ["error: nope.toml: no such recipe file"]


def test_invalid_toml_names_the_line_and_column(capsys, in_tmp):
    name = write(in_tmp / "bad.toml", 'name = "x"\n[model\nd_model = 64\n')
    (line,) = assert_user_error(*run(capsys, "recipe", "validate", name))
    assert line.startswith("error: bad.toml: invalid TOML: ")
    assert re.search(r"line 2, column \d+", line), line


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("model.d_model", "expected dotted.key=value"),
        ("model.d_model=[1,", "is not valid TOML"),
        ("model..d_model=64", "has an empty part"),
    ],
)
def test_a_bad_set_option(capsys, in_repo, assignment, expected):
    (line,) = assert_user_error(*run(capsys, "recipe", "validate", TITANS_MAG, "--set", assignment))
    assert line.startswith(f"error: --set {assignment}: ") and expected in line


def test_a_set_value_that_breaks_a_rule_names_the_key(capsys, in_repo):
    lines = assert_user_error(*run(capsys, "recipe", "validate", TITANS_MAG, "--set", "model.n_heads=400"))
    assert lines == ["error: --set: model.n_heads: expected at most d_model / 2 (384), got 400"]


def test_a_memory_combination_that_cannot_run_is_refused_at_recipe_time(capsys, in_tmp):
    """Checked when the recipe loads, not when the model is built: one line, the files that wrote
    [model.memory], the key and the reason."""
    base = write(in_tmp / "base.toml", '[model]\nlayout = "lmm"\nd_model = 64\nn_heads = 2\n')
    name = write(
        in_tmp / "child.toml",
        f"""
        extends = "{base}"
        [model.memory]
        memory = "mlp"
        retention = "decay"
        """,
    )
    lines = assert_user_error(
        *run(capsys, "recipe", "validate", name, "--set", "model.memory.gates.channelwise_decay=true")
    )
    assert lines == [
        "error: child.toml + --set: model.memory: a channel-wise decay scales the rows (value channels) of a "
        "matrix memory; memory 'mlp' has hidden layers without value channels: use memory 'linear'"
    ]
    code, out, _ = run(
        capsys,
        "recipe",
        "validate",
        name,
        "--set",
        'model.memory.memory="linear"',
        "--set",
        "model.memory.gates.channelwise_decay=true",
    )
    assert code == 0 and "memory linear/l2/decay/momentum" in out


def test_a_layout_without_memory_ignores_the_memory_table(capsys, in_tmp):
    name = write(in_tmp / "attn.toml", '[model]\nlayout = "attention"\n[model.memory]\nretention = "kl"\n')
    code, out, _ = run(capsys, "recipe", "validate", name)
    assert code == 0 and "no memory" in out


RECIPES = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "recipes").rglob("*.toml")
    if not {"base", "ablations"} & set(p.parts)  # ablations/: matrices, not recipes
)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_resolves_with_another_width(capsys, in_repo, recipe):
    code, out, err = run(capsys, "recipe", "show", recipe, "--set", "model.d_model=256")
    assert code == 0 and err == "", err
    assert tomllib.loads(out)["model"]["d_model"] == 256


def test_an_extends_cycle(capsys, in_tmp):
    write(in_tmp / "a.toml", 'extends = "b.toml"\n')
    write(in_tmp / "b.toml", 'extends = "a.toml"\n')
    lines = assert_user_error(*run(capsys, "recipe", "validate", "a.toml"))
    assert lines == ["error: a.toml: extends cycle: a.toml -> b.toml -> a.toml"]


def test_an_unknown_key_lists_the_allowed_keys(capsys, in_tmp):
    name = write(in_tmp / "typo.toml", "[model]\nd_modle = 64\n")
    (line,) = assert_user_error(*run(capsys, "recipe", "validate", name))
    assert line.startswith("error: typo.toml: model.d_modle: unknown key; allowed keys: ")
    assert "d_model" in line


def test_a_wrong_type_says_what_was_expected_and_found(capsys, in_tmp):
    name = write(in_tmp / "type.toml", '[model]\nd_model = "big"\n')
    lines = assert_user_error(*run(capsys, "recipe", "validate", name))
    assert lines[0].startswith("error: type.toml: model.d_model: expected an integer")
    assert lines[0].endswith('got "big"')


def test_an_unknown_component_name_suggests_the_closest(capsys, in_tmp):
    name = write(in_tmp / "name.toml", '[model.memory]\nretention = "decya"\n')
    (line,) = assert_user_error(*run(capsys, "recipe", "validate", name))
    assert line.startswith(
        "error: name.toml: model.memory.retention.name: unknown retention 'decya'; did you mean 'decay'? "
        "registered: decay, "
    )


# --- the real process --------------------------------------------------------------------


def python_m_miraslab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "miraslab", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_python_m_miraslab_version(tmp_path):
    result = python_m_miraslab("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"miraslab {miraslab.__version__}"


def test_a_recipe_error_in_a_real_process_exits_2_without_a_traceback(tmp_path):
    (tmp_path / "typo.toml").write_text('[model.memory]\nbias = "omgea"\n')
    result = python_m_miraslab("recipe", "validate", "typo.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(
        "error: typo.toml: model.memory.bias.name: unknown bias 'omgea'; did you mean 'omega'?"
    )
    assert "Traceback" not in result.stderr


def test_python_m_miraslab_recipe_validate_in_a_real_process(tmp_path):
    result = python_m_miraslab("recipe", "validate", str(REPO / TITANS_MAG), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith("ok: ")
