"""``--traceback`` (or ``--debug``, or MIRASLAB_TRACEBACK=1), before or after the command,
prints the chained traceback behind a one-line error; without it an unexpected error is one
line that says how to see more, and an ordinary bad-input error is its line alone."""

from __future__ import annotations

import attrs
import pytest
from plugin_install import tiny_recipe

import miraslab
from miraslab.cli import UNEXPECTED_HINT, main


@attrs.frozen
class NoParams:
    pass


class BuggyMonitor:
    """A monitor with a bug in its step hook."""

    def __init__(self, params: NoParams):
        pass

    @miraslab.hookimpl
    def on_step_end(self, run, metrics):
        raise ZeroDivisionError("a bug in the monitor")


class ExplodingRetention:
    def __init__(self, params: NoParams):
        raise KeyError("a bug in the retention's constructor")


class BuggyPlugin:
    @staticmethod
    @miraslab.hookimpl
    def register_monitors(register):
        register("buggy_monitor", BuggyMonitor, NoParams)

    @staticmethod
    @miraslab.hookimpl
    def register_retentions(register):
        register("exploding", ExplodingRetention, NoParams)


def recipe(retention: str = "decay", monitor: str = "") -> str:
    monitors = f'[[monitors]]\nname = "{monitor}"\n' if monitor else ""
    return tiny_recipe("traceback", f'retention = "{retention}"', tail=monitors)


@pytest.fixture
def buggy(register_plugin, tmp_path, monkeypatch):
    monkeypatch.delenv("MIRASLAB_TRACEBACK", raising=False)
    monkeypatch.chdir(tmp_path)
    register_plugin(BuggyPlugin, name="buggy", distribution="buggy-dist")
    (tmp_path / "monitor.toml").write_text(recipe(monitor="buggy_monitor"))
    (tmp_path / "retention.toml").write_text(recipe(retention="exploding"))
    (tmp_path / "typo.toml").write_text(recipe(retention="decya"))


def test_a_bad_input_error_is_its_one_line_without_a_hint(buggy, capsys):
    assert main(["recipe", "validate", "typo.toml"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: typo.toml: model.memory.retention.name: unknown retention 'decya'; did you mean 'decay'? "
        + err.split("did you mean 'decay'? ")[1].rstrip("\n")
    ]
    assert "Traceback" not in err and "--traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--traceback", "recipe", "validate", "typo.toml"],
        ["recipe", "validate", "typo.toml", "--traceback"],
        ["--debug", "recipe", "validate", "typo.toml"],
        ["recipe", "validate", "--debug", "typo.toml"],
    ],
)
def test_traceback_before_or_after_the_command_shows_the_chain_then_the_line(buggy, capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "Traceback (most recent call last):" or "Exception Group Traceback" in lines[0]
    # the registry's own error, hidden by the one-line error's `from None`, is in the chain
    assert "miraslab.errors.RegistryError: unknown retention 'decya'" in err
    assert "miraslab.errors.RecipeError: typo.toml: model.memory.retention.name" in err
    assert lines[-1].startswith("error: typo.toml: model.memory.retention.name: unknown retention 'decya'")


def test_the_environment_variable_turns_tracebacks_on(buggy, capsys, monkeypatch):
    monkeypatch.setenv("MIRASLAB_TRACEBACK", "1")
    assert main(["recipe", "validate", "typo.toml"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MIRASLAB_TRACEBACK", "0")
    assert main(["recipe", "validate", "typo.toml"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_with_the_hint_and_exit_1(buggy, capsys):
    assert main(["train", "monitor.toml", "--out", "run", "--quiet"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: unexpected ZeroDivisionError: a bug in the monitor {UNEXPECTED_HINT}"
    ]


def test_traceback_shows_where_the_unexpected_error_was_raised(buggy, capsys):
    assert main(["train", "monitor.toml", "--out", "run", "--quiet", "--traceback"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert 'raise ZeroDivisionError("a bug in the monitor")' in err and "in on_step_end" in err
    assert err.splitlines()[-1] == "error: unexpected ZeroDivisionError: a bug in the monitor"


def test_a_plugins_own_bug_keeps_its_named_line_and_gets_the_hint_and_its_cause(buggy, capsys):
    assert main(["recipe", "show", "retention.toml", "--params"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line.startswith("error: ")
        and "retention 'exploding' from plugin 'buggy' (distribution buggy-dist 0.0)" in line
    )
    assert line.endswith(f'KeyError: "a bug in the retention\'s constructor" {UNEXPECTED_HINT}')
    assert main(["recipe", "show", "retention.toml", "--params", "--traceback"]) == 2
    err = capsys.readouterr().err
    assert 'raise KeyError("a bug in the retention\'s constructor")' in err
    assert UNEXPECTED_HINT not in err
