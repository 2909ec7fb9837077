"""Third-party plugins found the real way: pip-installed distributions with entry points.

Each fixture distribution in ``tests/plugin_fixtures/`` is installed once per test session
with ``pip install --no-deps --no-build-isolation --target <tmp>`` (the venv is never
touched), and ``python -m miraslab`` runs in a subprocess with ``PYTHONPATH=<tmp>``, so
``importlib.metadata`` finds the distribution and pluggy registers its module exactly as
it would for a user.  No mocks, no in-process registration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from markdown_blocks import fenced_blocks

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "plugin_fixtures"
BASE_RECIPE = REPO / "recipes" / "base" / "lm.toml"

ACME = "acme-forget"
BROKEN = "broken-plugin"
MISSPELLED = "misspelled-hook"
DOCS_ACME = "docs-acme-forget"  # the distribution docs/plugins.md spells out, built from its text
PLUGINS_DOC = REPO / "docs" / "plugins.md"


def _setuptools_builds_wheels_offline() -> bool:
    """setuptools >= 70.1 builds wheels by itself; older ones need the ``wheel`` package too."""
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) >= (70, 1):
        return True
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def plugin_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each fixture distribution pip-installed into its own ``--target`` directory."""
    if not _setuptools_builds_wheels_offline():
        pytest.fail(
            "building the fixture plugins without network needs setuptools >= 70.1 in this "
            "environment (`pip install -U setuptools`); a fresh Python 3.11 venv has 65.5"
        )
    root = tmp_path_factory.mktemp("plugins")
    sites = {}
    for name in (ACME, BROKEN, MISSPELLED, DOCS_ACME):
        source = root / "src" / name  # a copy: setuptools writes build/ and *.egg-info beside the source
        if name == DOCS_ACME:
            write_docs_plugin(source)
        else:
            shutil.copytree(FIXTURES / name, source)
        target = root / "site" / name
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
             "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, f"pip could not install {name}:\n{result.stdout}\n{result.stderr}"
        sites[name] = target
    return sites


def write_docs_plugin(directory: Path) -> None:
    """The "plugin in five minutes" of docs/plugins.md: its pyproject.toml and module, verbatim."""
    files = {
        filename: text
        for language, text in fenced_blocks(PLUGINS_DOC)
        for filename in ("pyproject.toml", "acme_forget.py")
        if language in ("toml", "python") and text.startswith(f"# {filename}")  # the block names its file
    }
    assert sorted(files) == ["acme_forget.py", "pyproject.toml"], f"{PLUGINS_DOC}: blocks changed"
    directory.mkdir(parents=True)
    for filename, text in files.items():
        (directory / filename).write_text(text)


@pytest.fixture
def miraslab_with(plugin_sites, tmp_path):
    """miraslab_with(ACME, ...)(args..., env={...}) runs ``python -m miraslab`` seeing those plugins."""

    def with_plugins(*installed: str):
        def run(*args: str, env: dict[str, str] | None = None, module: bool = True):
            command = [sys.executable, "-m", "miraslab", *args] if module else [sys.executable, *args]
            return subprocess.run(
                command,
                cwd=tmp_path,  # outside the repository, as a user would run it
                env=plugin_env(plugin_sites, installed, env or {}),
                capture_output=True,
                text=True,
                timeout=300,
            )

        return run

    return with_plugins


def plugin_env(sites: dict[str, Path], installed: tuple[str, ...], extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRASLAB_")}
    paths = [str(sites[name]) for name in installed]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def components(result: subprocess.CompletedProcess) -> dict[tuple[str, str], dict]:
    assert result.returncode == 0, result.stderr
    return {(c["kind"], c["name"]): c for c in json.loads(result.stdout)}


def assert_user_error(result: subprocess.CompletedProcess) -> list[str]:
    """Exit 2; stderr is only ``error: ...`` lines, never a traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert lines, "an error must say something"
    assert all(line.startswith("error: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    return lines


@pytest.fixture
def acme_recipe(tmp_path):
    """A small LMM recipe over the repo's base recipe whose retention is the plugin's."""

    def write(rate: float) -> str:
        path = tmp_path / "acme.toml"
        path.write_text(
            textwrap.dedent(
                f"""\
                extends = "{BASE_RECIPE.as_posix()}"
                name = "acme-forget-lmm"

                [model]
                layout = "lmm"
                d_model = 64
                n_layers = 2
                n_heads = 2

                [model.memory]
                retention = {{ name = "acme_forget", rate = {rate!r} }}
                """
            )
        )
        return path.name  # commands run in tmp_path, so messages show the short name

    return write


# --- discovery and listing --------------------------------------------------------------


def test_plugins_json_lists_the_installed_component_with_its_distribution_version_and_params(miraslab_with):
    listed = components(miraslab_with(ACME)("plugins", "--json"))
    acme = listed[("retention", "acme_forget")]
    assert acme["source"] == "acme-forget"
    assert acme["version"] == "1.2.3"
    assert acme["plugin"] == "acme_forget"
    assert acme["params"] == [
        {
            "name": "rate",
            "type": "a number in (0, 1)",
            "default": 0.9,
            "required": False,
            "doc": "fraction of the memory kept per token",
        }
    ]
    assert listed[("retention", "decay")]["source"] == "miraslab"  # built-ins load beside it


def test_plugins_text_shows_the_plugin_component_under_its_kind(miraslab_with):
    result = miraslab_with(ACME)("plugins", "--kind", "retention")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "acme_forget" in line)
    assert "acme-forget 1.2.3" in line
    assert "rate = 0.9  [a number in (0, 1)]" in result.stdout


def test_the_plugin_written_as_docs_plugins_md_shows_lists_and_is_checked_as_it_says(
    miraslab_with, acme_recipe
):
    """docs/plugins.md's distribution, built from its text: `miraslab plugins --kind
    retention` prints the lines the page shows, and a recipe's out-of-range rate gets the
    message the page quotes."""
    listing = next(text for language, text in fenced_blocks(PLUGINS_DOC) if "$ miraslab plugins" in text)
    shown = [
        line for line in listing.splitlines() if "acme_forget" in line or line.lstrip().startswith("rate =")
    ]
    result = miraslab_with(DOCS_ACME)("plugins", "--kind", "retention")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "acme_forget" in line)
    assert lines[start : start + 2] == shown

    assert miraslab_with(DOCS_ACME)("recipe", "validate", acme_recipe(0.5)).returncode == 0
    quoted = re.search(r"refused with `(.*?)`", PLUGINS_DOC.read_text().replace("\n", " ")).group(1)
    error = assert_user_error(miraslab_with(DOCS_ACME)("recipe", "validate", acme_recipe(2.0)))
    assert error == [f"error: acme.toml: {quoted}"]


def test_without_the_distribution_on_the_path_the_component_is_unknown(miraslab_with, acme_recipe):
    lines = assert_user_error(miraslab_with()("recipe", "validate", acme_recipe(0.5)))
    assert lines == [
        "error: acme.toml: model.memory.retention.name: unknown retention 'acme_forget' registered: "
        + lines[0].split("registered: ")[1]
    ]


# --- recipes validate the plugin's params like a built-in's -------------------------------


def test_a_recipe_using_the_plugin_retention_validates(miraslab_with, acme_recipe):
    result = miraslab_with(ACME)("recipe", "validate", acme_recipe(0.5))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ok: acme.toml: acme-forget-lmm, layout lmm, 2 layers, d_model 64, "
        "memory mlp/l2/acme_forget/momentum, 1000 steps"
    ]


def test_a_plugin_param_out_of_range_is_one_line_naming_the_file_key_and_range(miraslab_with, acme_recipe):
    result = miraslab_with(ACME)("recipe", "validate", acme_recipe(2.0))
    assert assert_user_error(result) == [
        "error: acme.toml: model.memory.retention.rate: expected a number in (0, 1), got 2.0"
    ]


def test_the_resolved_recipe_carries_the_plugin_params(miraslab_with, acme_recipe):
    result = miraslab_with(ACME)("recipe", "show", acme_recipe(0.5), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"]["memory"]["retention"] == {"name": "acme_forget", "rate": 0.5}


# --- the component works inside the engine -------------------------------------------------

FORWARD = """
import json, torch, miraslab

torch.manual_seed(0)
x = torch.randn(2, 12, 32)

def layer(rate, path):
    torch.manual_seed(1)
    retention = {"name": "acme_forget", "rate": rate}
    return miraslab.MemoryLayer.from_options(32, heads=2, retention=retention, chunk_size=4, path=path)

chunked = layer(0.5, "chunked")
y = chunked(x)
y.sum().backward()
recurrent = layer(0.5, "recurrent")(x)
print(json.dumps({
    "shape": list(y.shape),
    "finite": bool(torch.isfinite(y).all()),
    "retention_class": type(chunked.memory.rule.retention).__name__,
    # relative to the output's largest magnitude (tests/tolerance.py)
    "chunked_vs_recurrent": ((y - recurrent).abs().max() / recurrent.abs().max()).item(),
    "rate_changes_output": ((y - layer(0.99, "chunked")(x)).abs().max() / y.abs().max()).item(),
}))
"""


@pytest.mark.parametrize(("site", "retention_class"), [(ACME, "ConstantForget"), (DOCS_ACME, "AcmeForget")])
def test_a_memory_layer_runs_forward_and_backward_with_the_plugin_retention(
    miraslab_with, site, retention_class
):
    result = miraslab_with(site)("-c", FORWARD, module=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["shape"] == [2, 12, 32] and report["finite"]
    assert report["retention_class"] == retention_class
    assert report["chunked_vs_recurrent"] < 1e-5  # the two paths agree at the same chunk size (fp32)
    assert report["rate_changes_output"] > 1e-3  # the retention is really applied (of the scale)


# --- failures name the plugin and its distribution ----------------------------------------


def test_a_plugin_whose_hook_raises_is_named_with_its_distribution_and_skipped(miraslab_with):
    result = miraslab_with(ACME, BROKEN)("plugins", "--json")
    assert result.stderr.splitlines() == [
        "warning: plugin 'broken_plugin' (distribution broken-plugin 0.1.0) raised in its "
        "register_memories hook: RuntimeError: the acme memory server is unreachable; skipped it "
        "(the other plugins load); silence this with MIRASLAB_DISABLE_PLUGINS=broken_plugin"
    ]
    assert ("retention", "acme_forget") in components(result)  # the other plugin still loads


def test_a_misspelled_hook_is_rejected_when_the_plugin_loads(miraslab_with):
    result = miraslab_with(MISSPELLED)("plugins", "--json")
    assert result.returncode == 0
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "warning: plugin 'misspelled_hook' (distribution misspelled-hook 0.1.0) is not a valid miraslab plugin: "
    )
    assert "unknown hook 'register_memoryes'" in line and "did you mean 'register_memories'?" in line
    (entry,) = [c for c in json.loads(result.stdout) if c["kind"] is None]
    assert (
        entry["plugin"] == "misspelled_hook"
        and entry["error"] == line[len("warning: ") : line.index("; skipped")]
    )


# --- MIRASLAB_PLUGINS / MIRASLAB_DISABLE_PLUGINS ------------------------------------------


def test_disabling_a_broken_plugin_by_distribution_name_lets_the_rest_load(miraslab_with):
    run = miraslab_with(ACME, BROKEN, MISSPELLED)
    blocked = {"MIRASLAB_DISABLE_PLUGINS": "broken-plugin, misspelled-hook"}
    listed = components(run("plugins", "--json", env=blocked))
    assert ("retention", "acme_forget") in listed


def test_disabling_a_plugin_by_entry_point_name_removes_its_components(miraslab_with):
    blocked = {"MIRASLAB_DISABLE_PLUGINS": "acme_forget"}
    listed = components(miraslab_with(ACME)("plugins", "--json", env=blocked))
    assert ("retention", "acme_forget") not in listed
    assert ("retention", "decay") in listed  # built-ins cannot be disabled


def test_the_allow_list_loads_only_the_named_third_party_plugins(miraslab_with):
    run = miraslab_with(ACME, BROKEN, MISSPELLED)
    listed = components(run("plugins", "--json", env={"MIRASLAB_PLUGINS": "acme-forget"}))
    assert {c["source"] for c in listed.values()} == {"miraslab", "acme-forget"}


def test_an_empty_allow_list_loads_no_third_party_plugin_but_every_builtin(miraslab_with):
    run = miraslab_with(ACME, BROKEN, MISSPELLED)
    listed = components(run("plugins", "--json", env={"MIRASLAB_PLUGINS": ""}))
    assert {c["source"] for c in listed.values()} == {"miraslab"}
    assert {"none", "decay", "lq_norm", "kl", "elastic_net"} <= {n for k, n in listed if k == "retention"}
