"""examples/miraslab-logcosh, a complete outside distribution, installed for real: pip puts it in
a ``--target`` directory (offline, the venv untouched), ``miraslab`` finds its entry points,
lists it, trains a recipe with its bias and each of its memories (TTT-Linear's x + LN(W x + b)
among them, a rule with an inner bias core lacks), and its own test suite runs the kit; then
it is uninstalled (the directory removed) and the components are gone again."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from plugin_install import env_with, pip_install, run_python, tiny_recipe
from safetensors.torch import load_file

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "miraslab-logcosh"
DISTRIBUTION, VERSION = "miraslab-logcosh", "0.4.0"
RECIPE = tiny_recipe(
    "logcosh-ttt",
    'memory = "ttt_ln"\nbias = { name = "logcosh", sharpness = 2.0 }',
    "steps = 3\nbatch_size = 4",
)
TTT_LINEAR_RECIPE = tiny_recipe(
    "ttt-linear",
    'memory = "ttt_linear"\nbias = "l2"\nretention = "none"\nalgorithm = "gd"',
    "steps = 3\nbatch_size = 4",
)
ADABELIEF_RECIPE = tiny_recipe(
    "adabelief",
    'memory = "mlp"\nbias = "l2"\nretention = "decay"\nalgorithm = "adabelief"',
    "steps = 3\nbatch_size = 4",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(run, site): ``run(*args)`` is ``python -m miraslab`` seeing the installed example."""
    root = tmp_path_factory.mktemp("example")
    (root / "src").mkdir()
    site = pip_install([EXAMPLE], root / "site", root / "src")
    env = env_with(site)

    def run(*args: str, cwd: Path = root) -> subprocess.CompletedProcess:
        return run_python(*args, env=env, cwd=cwd)

    (root / "recipe.toml").write_text(RECIPE)
    (root / "ttt_linear.toml").write_text(TTT_LINEAR_RECIPE)
    (root / "adabelief.toml").write_text(ADABELIEF_RECIPE)
    return run, site, root


def test_the_example_is_listed_trains_passes_its_own_kit_tests_and_uninstalls(installed):
    run, site, root = installed
    listing = run("-m", "miraslab", "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    listed = {(c["kind"], c["name"]): c for c in json.loads(listing.stdout)}
    for key in (
        ("bias", "logcosh"),
        ("memory", "ttt_ln"),
        ("memory", "ttt_linear"),
        ("algorithm", "adabelief"),
    ):
        assert (listed[key]["source"], listed[key]["version"]) == (DISTRIBUTION, VERSION)

    trained = run("-m", "miraslab", "train", "recipe.toml", "--out", "run")
    assert trained.returncode == 0, trained.stderr
    assert "done: step 3/3" in trained.stdout + trained.stderr

    # ttt_ln's LayerNorm gain and shift, shape (H, 1, d), are declared exempt from weight decay
    shown = run("-m", "miraslab", "recipe", "show", "recipe.toml", "--params", "--json")
    assert shown.returncode == 0, shown.stderr
    groups = json.loads(shown.stdout)["weight_decay"]["groups"]
    exempt = {
        p.rsplit(".", 1)[1]: t["why"] for p, t in groups["undecayed"]["tensors"].items() if ".arch." in p
    }
    assert exempt == {"gain": "declared", "shift": "declared"}
    assert not any(p.endswith((".gain", ".shift")) for p in groups["decayed"]["tensors"])

    # the distribution's own tests, run from a copy outside its source tree, so the installed
    # package (not the checkout) is what pytest imports
    shutil.copytree(EXAMPLE / "tests", root / "example_tests")
    suite = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "example_tests")
    assert suite.returncode == 0, suite.stdout + suite.stderr
    assert "20 passed" in suite.stdout

    # AdaBelief, a learning algorithm with state of its own (its moments), on a deep memory
    trained = run("-m", "miraslab", "train", "adabelief.toml", "--out", "run-adabelief")
    assert trained.returncode == 0, trained.stderr
    assert "done: step 3/3" in trained.stdout + trained.stderr

    # TTT-Linear, whose inner bias b is learned at test time beside W
    trained = run("-m", "miraslab", "train", "ttt_linear.toml", "--out", "run-ttt-linear")
    assert trained.returncode == 0, trained.stderr
    assert "done: step 3/3" in trained.stdout + trained.stderr
    resolved = (root / "run-ttt-linear" / "recipe.toml").read_text()
    assert 'name = "ttt_linear"' in resolved and 'name = "gd"' in resolved
    (model_file,) = sorted((root / "run-ttt-linear" / "checkpoints").glob("step-*/model.safetensors"))[-1:]
    trained_state = load_file(model_file)
    (bias_init,) = [t for name, t in trained_state.items() if name.endswith(".arch.init.w_bias")]
    assert bias_init.shape == (2, 16, 1) and bias_init.abs().max() > 0  # b's W_init starts at 0: trained
    shown = run("-m", "miraslab", "recipe", "show", "ttt_linear.toml", "--params", "--json")
    undecayed = json.loads(shown.stdout)["weight_decay"]["groups"]["undecayed"]["tensors"]
    spared = {p.rsplit(".", 1)[1]: t["why"] for p, t in undecayed.items() if ".arch." in p}
    assert spared == {"w_bias": "bias", "ln_weight": "declared", "ln_bias": "bias"}

    shutil.rmtree(site)  # uninstall: a --target install is its directory
    listing = run("-m", "miraslab", "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    assert {c["source"] for c in json.loads(listing.stdout)} == {"miraslab"}
    unknown = run("-m", "miraslab", "recipe", "validate", "recipe.toml")
    assert unknown.returncode == 2 and "unknown memory 'ttt_ln'" in unknown.stderr


def test_the_example_imports_only_the_public_face():
    """What docs/plugins.md promises an outside package needs: miraslab and miraslab.api."""
    for module in (EXAMPLE / "miraslab_logcosh").glob("*.py"):
        imports = [
            line for line in module.read_text().splitlines() if "miraslab" in line and "import" in line
        ]
        assert all(
            line.strip() in ("import miraslab",) or line.strip().startswith("from miraslab.api import")
            for line in imports
        ), (module.name, imports)


def test_the_example_readme_says_how_to_install_and_test():
    text = (EXAMPLE / "README.md").read_text()
    assert "pip install -e" in text and "pytest" in text
    assert textwrap.dedent(text).count("miraslab_kit") >= 1
