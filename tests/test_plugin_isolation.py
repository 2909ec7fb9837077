"""A broken third-party plugin is isolated: named with its distribution, skipped with one
warning line (naming MIRASLAB_DISABLE_PLUGINS), listed by ``miraslab plugins`` with its
error, and the cause of the error when a recipe asks for a component it would provide.

Four broken fixture distributions (``tests/plugin_fixtures/``: an import that fails, a hook
that raises, a misspelled hook, a plugin API range this miraslab is outside of) are
pip-installed, once for the module, into one ``--target`` site beside the working
``acme-forget``; ``python -m miraslab`` runs in a subprocess seeing that site.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from plugin_install import FIXTURES, env_with, pip_install, run_python, tiny_recipe

import miraslab
from miraslab import plugin_api
from miraslab.errors import PluginError
from miraslab.registry import Source, check_plugin_api

REPO = Path(__file__).resolve().parents[1]
BROKEN = {  # entry point -> (distribution, version)
    "broken_plugin": ("broken-plugin", "0.1.0"),
    "misspelled_hook": ("misspelled-hook", "0.1.0"),
    "memory.acme_fast": ("import-fails", "0.3.0"),
    "old_forget": ("old-api", "2.0.0"),
    "acme_pair": ("malformed-component", "0.5.0"),
}
IMPORT_ERROR = (
    "plugin 'memory.acme_fast' (distribution import-fails 0.3.0) could not be imported from "
    "'import_fails': ModuleNotFoundError: No module named 'acme_fast_kernels'"
)
API_ERROR = (
    "plugin 'old_forget' (distribution old-api 2.0.0) supports the miraslab plugin API >=2,<3, but "
    f"miraslab {miraslab.__version__} provides plugin API {miraslab.PLUGIN_API_VERSION}; install a "
    "release of old-api for API 1.0, or a miraslab in its range"
)
MALFORMED_ERROR = (
    "plugin 'acme_pair' (distribution malformed-component 0.5.0) in register for retention 'bad_forget': "
    "params must be an attrs class, got <class 'dict'>"
)
HOOK_ERROR = (
    "plugin 'broken_plugin' (distribution broken-plugin 0.1.0) raised in its register_memories hook: "
    "RuntimeError: the acme memory server is unreachable"
)


def recipe(memory: str = "mlp", retention: str = "decay") -> str:
    return tiny_recipe("isolation", f'memory = "{memory}"\nretention = "{retention}"')


@pytest.fixture(scope="module")
def miraslab_cli(tmp_path_factory):
    """run(*args, env=...) is ``python -m miraslab`` seeing acme-forget and the four broken plugins."""
    root = tmp_path_factory.mktemp("isolation")
    (root / "src").mkdir()
    names = ["acme-forget", *sorted({distribution for distribution, _ in BROKEN.values()})]
    site = pip_install([FIXTURES / name for name in names], root / "site", root / "src")

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return run_python("-m", "miraslab", *args, env=env_with(site, **env), cwd=root)

    run.root = root
    return run


def warnings_of(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def test_plugins_json_lists_the_working_components_and_each_broken_plugin_with_its_error(miraslab_cli):
    result = miraslab_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    kinds = {(c["kind"], c["name"]): c for c in listed if c["kind"]}
    assert kinds[("retention", "acme_forget")]["version"] == "1.2.3"  # the working plugin loads
    assert kinds[("retention", "decay")]["source"] == "miraslab"  # and every built-in
    assert ("retention", "old_forget") not in kinds  # refused by its API range, not half-loaded
    assert ("retention", "half_forget") not in kinds  # registered before the malformed one: rolled back
    broken = {c["plugin"]: c for c in listed if c["kind"] is None}
    assert {p: (c["source"], c["version"]) for p, c in broken.items()} == BROKEN
    assert broken["memory.acme_fast"]["error"] == IMPORT_ERROR
    assert broken["memory.acme_fast"]["provides"] == ["memory acme_fast"]  # read from the entry point
    assert broken["old_forget"]["error"] == API_ERROR
    assert broken["broken_plugin"]["error"] == HOOK_ERROR
    assert "unknown hook 'register_memoryes'" in broken["misspelled_hook"]["error"]
    assert broken["acme_pair"]["error"] == MALFORMED_ERROR
    assert broken["acme_pair"]["provides"] == ["acme_pair", "retention half_forget", "retention bad_forget"]


def test_each_broken_plugin_is_one_warning_line_naming_its_distribution_and_the_switch(miraslab_cli):
    result = miraslab_cli("plugins")
    assert result.returncode == 0, result.stderr
    lines = warnings_of(result)
    assert lines == result.stderr.splitlines()  # nothing else: no traceback
    assert len(lines) == len(BROKEN)
    for plugin, (distribution, version) in BROKEN.items():
        (line,) = [line for line in lines if f"plugin {plugin!r}" in line]
        assert f"(distribution {distribution} {version})" in line
        assert line.endswith(
            f"; skipped it (the other plugins load); silence this with MIRASLAB_DISABLE_PLUGINS={plugin}"
        )
    assert f"warning: {IMPORT_ERROR}; skipped it" in result.stderr
    # the text listing ends with the broken plugins, each with its error
    tail = result.stdout[result.stdout.index("broken (skipped") :].splitlines()
    assert len(tail) == 1 + len(BROKEN)
    assert f"  {API_ERROR}" in tail and f"  {IMPORT_ERROR}" in tail and f"  {MALFORMED_ERROR}" in tail


def test_disabling_the_broken_plugins_by_name_silences_them(miraslab_cli):
    result = miraslab_cli("plugins", "--json", MIRASLAB_DISABLE_PLUGINS=",".join(BROKEN))
    assert result.returncode == 0 and result.stderr == ""
    assert all(c["kind"] for c in json.loads(result.stdout))


def test_a_recipe_of_builtin_components_validates_and_trains_beside_broken_plugins(miraslab_cli):
    (miraslab_cli.root / "builtin.toml").write_text(recipe())
    (miraslab_cli.root / "acme.toml").write_text(recipe(retention="acme_forget"))
    assert miraslab_cli("recipe", "validate", "acme.toml").returncode == 0
    result = miraslab_cli("train", "builtin.toml", "--out", "builtin-run", "--quiet")
    assert result.returncode == 0, result.stderr
    assert len(warnings_of(result)) == len(BROKEN)
    assert (miraslab_cli.root / "builtin-run" / "summary.json").exists()


@pytest.mark.parametrize(
    ("component", "error"),
    [
        ({"memory": "acme_fast"}, f"model.memory.memory.name: unknown memory 'acme_fast': it comes from a plugin that failed to load: {IMPORT_ERROR}"),
        ({"retention": "old_forget"}, f"model.memory.retention.name: unknown retention 'old_forget': it comes from a plugin that failed to load: {API_ERROR}"),
        ({"retention": "half_forget"}, f"model.memory.retention.name: unknown retention 'half_forget': it comes from a plugin that failed to load: {MALFORMED_ERROR}"),
    ],
)  # fmt: skip
def test_a_recipe_using_a_broken_plugins_component_fails_with_its_error(miraslab_cli, component, error):
    (miraslab_cli.root / "uses.toml").write_text(recipe(**component))
    result = miraslab_cli("recipe", "validate", "uses.toml")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert errors == [f"error: uses.toml: {error}"]


def test_an_unknown_name_of_a_kind_a_broken_plugin_registers_names_it_as_a_possible_cause(miraslab_cli):
    """broken_plugin's register_memories raised before naming anything: it may have been it."""
    (miraslab_cli.root / "maybe.toml").write_text(recipe(memory="server_memory"))
    result = miraslab_cli("recipe", "validate", "maybe.toml")
    assert result.returncode == 2
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(
        "error: maybe.toml: model.memory.memory.name: unknown memory 'server_memory' registered: "
    )
    assert error.endswith(f"; it may come from a plugin that failed to load: {HOOK_ERROR}; {IMPORT_ERROR}")
    # a memory's unknown name does not blame a plugin that has only a retention hook
    assert "old_forget" not in error and "acme_pair" not in error


def test_traceback_shows_the_plugins_import_error_behind_the_one_line(miraslab_cli):
    (miraslab_cli.root / "uses.toml").write_text(recipe(memory="acme_fast"))
    result = miraslab_cli("recipe", "validate", "uses.toml", "--traceback")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "import acme_fast_kernels" in result.stderr  # the plugin's own line
    assert "ModuleNotFoundError: No module named 'acme_fast_kernels'" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "error: uses.toml: model.memory.memory.name: unknown memory"
    )


# --- the plugin API version -----------------------------------------------------------------


def test_the_plugin_api_version_is_public():
    assert miraslab.PLUGIN_API_VERSION == miraslab.api.PLUGIN_API_VERSION == "1.0"


@pytest.mark.parametrize(
    ("spec", "version", "expected"),
    [
        (">=1,<2", "1.0", True),
        (">=1.0,<2", "1.9", True),
        (">=1,<2", "2.0", False),
        (">=1.1", "1.0", False),
        ("<1", "1.0", False),
        ("==1", "1.0", True),  # "1" is "1.0"
        ("!=1.0", "1.0", False),
        ("> 0.9 , <= 1.0", "1.0", True),
        ("~=1.2", "1.5", True),
        ("~=1.2", "2.0", False),
        ("~=1.2", "1.1", False),
        ("~=1.2.3", "1.3", False),
        ("~=1.2.3", "1.2.4", True),
    ],
)
def test_supports_against_a_table_of_ranges(spec, version, expected):
    assert plugin_api.supports(spec, version) is expected


@pytest.mark.parametrize(
    ("spec", "bad"), [("", "''"), ("1.0", "'1.0'"), (">=1,<two", "'<two'"), ("~=1", "'~=1'")]
)
def test_a_malformed_range_names_its_clause(spec, bad):
    with pytest.raises(ValueError, match=bad):
        plugin_api.supports(spec)


def test_a_malformed_declaration_is_a_plugin_error_naming_the_attribute():
    class Module:
        MIRASLAB_PLUGIN_API = ">= one"

    with pytest.raises(
        PluginError, match=r"^plugin 'p' \(distribution d 1\.0\): MIRASLAB_PLUGIN_API: '>= one'"
    ):
        check_plugin_api(Module, Source("p", "d", "1.0"))
    Module.MIRASLAB_PLUGIN_API = f"=={miraslab.PLUGIN_API_VERSION}"
    check_plugin_api(Module, Source("p", "d", "1.0"))  # in range: nothing raised


def test_traceback_shows_what_broke_each_skipped_plugin_before_its_warning(miraslab_cli):
    result = miraslab_cli("--traceback", "plugins", MIRASLAB_PLUGINS="broken-plugin,import-fails")
    assert result.returncode == 0
    err = result.stderr
    assert 'raise RuntimeError("the acme memory server is unreachable")' in err
    assert "import acme_fast_kernels" in err
    assert err.index("import acme_fast_kernels") < err.index(f"warning: {IMPORT_ERROR}")
    assert len(warnings_of(result)) == 2
