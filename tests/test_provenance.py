"""RUN/provenance.json records the distribution and version behind each component a run uses;
loading the run back says which package to install when one is missing, and warns when
another version supplies a component.

``acme-forget`` 1.2.3 (tests/plugin_fixtures/) and a 1.3.0 copy of it are pip-installed once
for the module into two ``--target`` sites; a run trained with 1.2.3 is then loaded with
neither site on the path (uninstalled) and with 1.3.0.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from plugin_install import FIXTURES, env_with, pip_install, run_python, tiny_recipe

import miraslab
from miraslab.errors import MiraslabError, ProvenanceWarning
from miraslab.recipe.resolve import load_recipe
from miraslab.registry import BrokenPlugin, Source, use_registry
from miraslab.train.provenance import PROVENANCE_FILE, check_provenance, components_used, provenance

RECIPE = tiny_recipe("acme-provenance", 'retention = { name = "acme_forget", rate = 0.5 }')
ACME = {"kind": "retention", "name": "acme_forget", "plugin": "acme_forget", "distribution": "acme-forget"}

# every way of loading a run back, in one process: the CLI commands and miraslab.load_run
LOAD_BACK = """
import contextlib, io, json, sys
import miraslab
from miraslab.cli import main

out = {}
for name, argv in [("resume", ["train", "--resume", "run", "--quiet"]),
                   ("generate", ["generate", "run", "--max-tokens", "2"]),
                   ("export", ["export", "run", "--hf", "exported-again"])]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    out[name] = [code, err.getvalue().splitlines()]
try:
    miraslab.load_run("run")
    out["load_run"] = None
except miraslab.MiraslabError as exc:
    out["load_run"] = str(exc)
from transformers import AutoModelForCausalLM
try:  # the export written with the plugin installed, loaded without it
    AutoModelForCausalLM.from_pretrained("exported", trust_remote_code=True)
    out["from_pretrained"] = None
except miraslab.MiraslabError as exc:
    out["from_pretrained"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, run, sites): a 2-step run trained to step 1 with acme-forget 1.2.3; sites by version."""
    root = tmp_path_factory.mktemp("provenance")
    newer = root / "acme-1.3.0" / "acme-forget"
    shutil.copytree(FIXTURES / "acme-forget", newer)
    pyproject = newer / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "1.2.3"', 'version = "1.3.0"'))
    sites = {}
    for version, source in (("1.2.3", FIXTURES / "acme-forget"), ("1.3.0", newer)):
        (root / "src" / version).mkdir(parents=True)
        sites[version] = pip_install([source], root / "site" / version, root / "src" / version)
    (root / "acme.toml").write_text(RECIPE)
    result = run_python(
        "-m", "miraslab", "train", "acme.toml", "--out", "run", "--max-steps", "1", "--quiet",
        env=env_with(sites["1.2.3"]), cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    exported = run_python(
        "-m", "miraslab", "export", "run", "--hf", "exported",
        env=env_with(sites["1.2.3"], HF_HUB_OFFLINE="1"), cwd=root,
    )  # fmt: skip
    assert exported.returncode == 0 and "warning" not in exported.stderr, exported.stderr
    return root, root / "run", sites


def test_the_run_records_each_components_distribution_and_version(trained):
    _, run, _ = trained
    recorded = json.loads((run / PROVENANCE_FILE).read_text())
    assert recorded["miraslab"] == miraslab.__version__
    assert recorded["plugin_api"] == miraslab.PLUGIN_API_VERSION
    entries = {(e["kind"], e["name"]): e for e in recorded["components"]}
    assert entries[("retention", "acme_forget")] == {**ACME, "version": "1.2.3"}
    builtin = {"plugin": "layout.lmm", "distribution": "miraslab", "version": miraslab.__version__}
    assert entries[("layout", "lmm")] == {"kind": "layout", "name": "lmm", **builtin}
    assert {("task", "mqar"), ("memory", "mlp"), ("algorithm", "momentum")} <= set(entries)


def test_without_the_plugin_every_way_of_loading_the_run_says_what_to_install(trained):
    """train --resume, generate, export, load_run, and from_pretrained of its export."""
    root, _, _ = trained
    result = run_python("-c", LOAD_BACK, env=env_with(HF_HUB_OFFLINE="1"), cwd=root)  # uninstalled
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    line = "run: the run uses retention 'acme_forget' from acme-forget 1.2.3, which is not installed: pip install 'acme-forget==1.2.3'"
    for command in ("resume", "generate", "export"):
        assert loaded[command] == [2, [f"error: {line}"]], command
    assert loaded["load_run"] == line
    assert loaded["from_pretrained"] == line.replace("run:", "exported:", 1)


def test_another_version_of_the_plugin_is_a_warning_naming_both(trained):
    root, _, sites = trained
    result = run_python(
        "-m", "miraslab", "train", "--resume", "run", "--quiet", env=env_with(sites["1.3.0"]), cwd=root
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: run: trained with acme-forget 1.2.3, but acme-forget 1.3.0 is installed (it supplies "
        "retention 'acme_forget'); results may differ: pip install 'acme-forget==1.2.3'"
    ]
    assert json.loads((root / "run" / "summary.json").read_text())  # the resume ran to the end
    exported = run_python(
        "-m", "miraslab", "export", "run", "--hf", "exported-1.3.0",
        env=env_with(sites["1.3.0"], HF_HUB_OFFLINE="1"), cwd=root,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "trained with acme-forget 1.2.3, but acme-forget 1.3.0 is installed" in exported.stderr


# --- in-process: the check against a registry --------------------------------------------------


def write_run(tmp_path: Path, components: list[dict]) -> Path:
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps({"components": components}))
    return tmp_path


def test_a_distribution_installed_but_broken_is_named_with_its_error(tmp_path, registry):
    run = write_run(tmp_path, [{**ACME, "version": "1.2.3"}])
    registry.broken.append(BrokenPlugin(Source("acme_forget", "acme_forget", "1.2.3"), "it raised: boom"))
    with pytest.raises(MiraslabError) as error:
        check_provenance(run, registry)
    assert str(error.value) == (
        f"{run}: the run uses retention 'acme_forget' from acme-forget 1.2.3, which is installed but "
        "failed to load: it raised: boom"
    )


def test_a_component_its_installed_distribution_no_longer_supplies(tmp_path, registry):
    gone = {
        "kind": "bias",
        "name": "retired",
        "plugin": "bias.retired",
        "distribution": "miraslab",
        "version": "0.0.9",
    }
    with pytest.raises(
        MiraslabError,
        match=r"bias 'retired' from miraslab 0\.0\.9; miraslab .* is installed but no longer supplies it: pip install 'miraslab==0\.0\.9'$",
    ):
        check_provenance(write_run(tmp_path, [gone]), registry)


def test_a_component_now_supplied_by_another_distribution_is_a_warning(tmp_path, registry):
    moved = {
        "kind": "retention",
        "name": "decay",
        "plugin": "decay",
        "distribution": "acme-forget",
        "version": "1.0",
    }
    with pytest.warns(
        ProvenanceWarning, match=r"'decay' was supplied by acme-forget 1\.0 .*; here it comes from miraslab"
    ):
        check_provenance(write_run(tmp_path, [moved]), registry)


def test_a_run_without_provenance_is_not_checked_and_a_malformed_file_is_named(tmp_path, registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_provenance(tmp_path, registry)  # written before provenance existed
    (tmp_path / PROVENANCE_FILE).write_text('{"components": [{"kind": "memory"}]}')
    with pytest.raises(
        MiraslabError, match=rf"^{tmp_path / PROVENANCE_FILE}: not the provenance miraslab writes \(KeyError"
    ):
        check_provenance(tmp_path, registry)


def test_components_of_stage_overrides_and_nested_components_are_recorded(write_recipe, registry):
    path = write_recipe(
        "staged.toml",
        tiny_recipe(
            "staged",
            'bias = { name = "omega", window = 2, inner = "huber" }',
            train="",
            tail="[[train.stages]]\nsteps = 2\n[[train.stages]]\nsteps = 2\n"
            'overrides = { "model.memory.bias.inner" = "l2" }\n',
        ),
    )
    with use_registry(registry):
        recipe = load_recipe(path)
        used = components_used(recipe)
        recorded = provenance(recipe)
    assert {("bias", "omega"), ("bias", "huber"), ("bias", "l2")} <= set(used)
    assert len(used) == len(set(used))
    assert {(e["kind"], e["name"]) for e in recorded["components"]} == set(used)
