"""Installing fixture plugin distributions the real way, for the tests that need them.

``pip install --no-deps --no-build-isolation --no-index --target SITE`` (offline, the venv
untouched): ``importlib.metadata`` then finds the distributions through ``PYTHONPATH=SITE``
exactly as it finds a user's, and uninstalling one is removing its directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "plugin_fixtures"


def pip_install(sources: list[Path], site: Path, workdir: Path) -> Path:
    """Install the distributions in ``sources`` (copied to ``workdir`` first) into ``site``."""
    copies = []
    for source in sources:  # setuptools writes build/ and *.egg-info beside the source
        copy = workdir / source.name
        shutil.copytree(source, copy)
        copies.append(str(copy))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), *copies],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"pip could not install {copies}:\n{result.stdout}\n{result.stderr}"
    return site


def env_with(*sites: Path, **extra: str) -> dict[str, str]:
    """This process's environment without MIRASLAB_* settings, seeing only ``sites``' plugins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRASLAB_")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, sites), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run_python(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def tiny_recipe(name: str, memory: str, train: str = "steps = 2\nbatch_size = 2", tail: str = "") -> str:
    """A recipe small enough to train in seconds: one 32-wide LMM block on a short MQAR, with
    ``memory`` the lines of its ``[model.memory]`` table and ``train`` those of ``[train]``
    (or ``[[train.stages]]`` tables, given whole in ``tail``)."""
    train_table = f"[train]\n{train}\n" if train else ""
    return (
        f'name = "{name}"\n[model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nlayout = "lmm"\n'
        f"[model.memory]\n{memory}\nchunk_size = 4\n"
        '[data]\ntask = { name = "mqar", seq_len = 32, num_kv_pairs = 4 }\nseq_len = 32\n'
        f"{train_table}{tail}"
    )
