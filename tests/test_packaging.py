"""Packaging: core/ and plugins/ install as one ``miraslab`` package, every plugin has its entry point.

The fast tests read pyproject.toml and the source tree, so a new package or plugin module
cannot be forgotten.  The slow ones build the wheel, install it into a fresh venv and run
``miraslab`` from there, as a user who ran ``pip install miraslab`` would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from miraslab.registry import KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
ENTRY_POINTS: dict[str, str] = PYPROJECT["project"]["entry-points"]["miraslab"]
IMPORT_ROOTS = {"core": "miraslab", "plugins": "miraslab.plugins"}
BUILTIN_KINDS = frozenset(
    ("memory", "bias", "retention", "algorithm", "features", "mixer", "layout", "attention", "task")
)


def source_packages() -> dict[str, Path]:
    """Dotted import name -> directory, for every directory with an ``__init__.py``."""
    found = {}
    for top, import_root in IMPORT_ROOTS.items():
        for init in sorted((REPO / top).rglob("__init__.py")):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(REPO / top).parts
            found[".".join((import_root, *relative))] = init.parent
    return found


def plugin_modules() -> dict[str, str]:
    """Expected entry points: ``"kind.name" -> "miraslab.plugins.kind.name"`` for plugins/<kind>/<name>.py
    (a module whose name starts with ``_`` holds helpers its kind's plugins share, not a plugin)."""
    expected = {}
    for module in sorted((REPO / "plugins").glob("*/*.py")):
        if not module.name.startswith("_"):
            kind, name = module.parent.name, module.stem
            expected[f"{kind}.{name}"] = f"miraslab.plugins.{kind}.{name}"
    return expected


# --- pyproject.toml against the source tree -------------------------------------------------


def test_core_and_plugins_map_onto_the_miraslab_namespace():
    assert SETUPTOOLS["package-dir"] == {"miraslab": "core", "miraslab.plugins": "plugins"}
    assert PYPROJECT["project"]["scripts"] == {"miraslab": "miraslab.cli:main"}


def test_every_source_package_is_listed_in_setuptools_packages():
    listed = set(SETUPTOOLS["packages"])
    present = set(source_packages())
    missing = sorted(present - listed)
    stale = sorted(listed - present)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert not stale, f"listed in [tool.setuptools] packages but not a directory with __init__.py: {stale}"


def test_every_directory_of_python_modules_is_a_package():
    for top in IMPORT_ROOTS:
        for module in (REPO / top).rglob("*.py"):
            if "__pycache__" not in module.parts:
                assert (module.parent / "__init__.py").is_file(), (
                    f"{module.relative_to(REPO)} is in a directory without __init__.py: it would not be installed"
                )


def test_every_plugin_module_has_an_entry_point_and_every_entry_point_a_module():
    expected = plugin_modules()
    missing = {k: v for k, v in expected.items() if ENTRY_POINTS.get(k) != v}
    stale = sorted(set(ENTRY_POINTS) - set(expected))
    lines = "\n".join(f'"{k}" = "{v}"' for k, v in missing.items())
    assert not missing, f"add to [project.entry-points.miraslab] in pyproject.toml:\n{lines}"
    assert not stale, f"entry points without a module plugins/<kind>/<name>.py: {stale}"


def test_plugin_directories_are_named_for_component_kinds():
    kinds = {path.parent.name for path in (REPO / "plugins").glob("*/__init__.py")}
    assert kinds <= set(KINDS), (
        f"plugins/ directories that are not component kinds: {sorted(kinds - set(KINDS))}"
    )


def test_the_installed_miraslab_has_the_entry_points_of_pyproject():
    installed = {
        ep.name: ep.value for ep in metadata.entry_points(group="miraslab") if ep.dist.name == "miraslab"
    }
    assert installed == ENTRY_POINTS, (
        "the installed miraslab's entry points differ from pyproject.toml; "
        "run `pip install -e .` again so new plugins are discovered"
    )


# --- the wheel, installed into a fresh venv --------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the tree (so no build/ or *.egg-info lands in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, source / name)
    for top in IMPORT_ROOTS:
        shutil.copytree(REPO / top, source / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # --skip-dependency-check: setuptools >= 70.1 builds wheels without the `wheel` package
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
         "--outdir", str(root / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"the wheel did not build:\n{result.stdout}\n{result.stderr}"
    (built,) = (root / "dist").glob("miraslab-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the wheel installed; its dependencies come from this environment.

    A ``.pth`` file adds this environment's site-packages after the venv's own.  Paths
    added by a ``.pth`` are not scanned for further ``.pth`` files, so an editable
    install of miraslab here does not take over the installed wheel.
    """
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"pip could not install the wheel:\n{result.stdout}\n{result.stderr}"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_miraslab_test_dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    return venv


def run_in(venv: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRASLAB_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(venv / "bin" / command[0]), *command[1:]],
        cwd=cwd,  # outside the repository: its core/ and plugins/ must not be importable from cwd
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_wheel_holds_only_the_miraslab_package_with_every_plugin_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    (dist_info,) = tops - {"miraslab"}  # no tests/, core/, plugins/ or anything else at the top
    assert dist_info.endswith(".dist-info")
    assert not [name for name in names if "/tests/" in name or "__pycache__" in name]
    for module in plugin_modules().values():
        assert module.replace(".", "/") + ".py" in names, module
    for package in source_packages():
        assert package.replace(".", "/") + "/__init__.py" in names, package


@pytest.mark.slow
def test_the_wheel_imports_as_miraslab_from_the_fresh_venv(fresh_venv, tmp_path):
    probe = (
        "import json, miraslab; from importlib import metadata; "
        "print(json.dumps({'file': miraslab.__file__, "
        "'dist': str(metadata.distribution('miraslab').locate_file(''))}))"
    )
    result = run_in(fresh_venv, "python", "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    where = json.loads(result.stdout)
    assert Path(where["file"]).is_relative_to(fresh_venv), where
    assert Path(where["dist"]).is_relative_to(fresh_venv), where


@pytest.mark.slow
@pytest.mark.parametrize("module", ["core", "plugins"])
def test_nothing_but_miraslab_is_installed_at_the_top_level(fresh_venv, tmp_path, module):
    result = run_in(fresh_venv, "python", "-c", f"import {module}", cwd=tmp_path)
    assert result.returncode != 0
    assert f"No module named '{module}'" in result.stderr


@pytest.mark.slow
def test_the_installed_command_lists_the_builtin_components_from_the_miraslab_distribution(
    fresh_venv, tmp_path
):
    result = run_in(fresh_venv, "miraslab", "plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert {c["source"] for c in listed} == {"miraslab"}
    assert {c["version"] for c in listed} == {PYPROJECT["project"]["version"]}
    assert {c["plugin"] for c in listed} == set(ENTRY_POINTS)  # every built-in module registered something
    assert {c["kind"] for c in listed} >= BUILTIN_KINDS
