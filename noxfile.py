"""Developer sessions: ``nox -s tests``, ``nox -s slow_tests``, ``nox -s lint``.

By default every session runs in the environment nox itself runs in (the venv where
``pip install -e '.[test]'`` put miraslab and its test tools), so nothing is installed
and PyTorch is not downloaded again::

    nox -s tests                      # every test but the compile and slow ones (about 2 minutes)
    nox -s slow_tests                 # torch.compile (inductor) and process tests (8 minutes cold, 5 warm)
    nox -s tests -- tests/test_cli.py -x          # arguments after -- go to pytest
    nox -s tests -- -m ""                         # a -m after -- replaces the tier: everything
    nox -s lint                       # ruff check + ruff format --check
    nox -s ablate -- recipes/ablations/miras-mqar.toml            # every cell of a matrix
    nox -s ablate -- MATRIX.toml --cell "algorithm=gd,memory=mlp"  # one cell (ids: --dry-run)

CI runs all three.  To run in an isolated, freshly created venv instead (the test sessions
install setuptools >= 70.1, then torch==2.13.0, the CPU build, then ``-e '.[test]'``;
``lint`` installs only ruff)::

    nox -s tests --force-venv-backend venv      # or: -fb venv, -db venv
    nox -s tests -fb venv -r                    # reuse that venv on the next run
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests", "slow_tests", "lint"]

TORCH = "torch==2.13.0"  # the CPU wheel; a bare `torch` would pull a multi-GB CUDA build
# A new Python 3.11 venv has setuptools 65.5, which cannot build the test suite's wheels
# without network (--no-build-isolation needs setuptools >= 70.1, or the `wheel` package).
BUILD_TOOLS = ("pip", "setuptools>=70.1")


def python_of(session: nox.Session) -> str:
    """The session venv's interpreter; without one, the activated venv's, else the one running nox."""
    if session.venv_backend != "none":
        return "python"
    active = os.environ.get("VIRTUAL_ENV")
    if active and Path(active, "bin", "python").exists():  # e.g. nox from pipx inside an activated venv
        return str(Path(active, "bin", "python"))
    return sys.executable


# The tiers, by pytest marker (pyproject.toml): what must pass on every change, and the
# torch.compile and process tests, whose inductor compiles take minutes on a cold cache.
FAST = "not compile and not slow"
SLOW = "compile or slow"


def install_for_tests(session: nox.Session) -> None:
    if session.venv_backend != "none":
        session.install("--upgrade", *BUILD_TOOLS)
        session.install(TORCH)
        session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    """Every test not marked compile or slow; pass pytest arguments after ``--``."""
    install_for_tests(session)
    session.run(python_of(session), "-m", "pytest", "-m", FAST, *session.posargs)


@nox.session
def slow_tests(session: nox.Session) -> None:
    """The compile and slow tests (inductor, torchrun, wheel builds); pytest arguments after ``--``."""
    install_for_tests(session)
    session.run(python_of(session), "-m", "pytest", "-m", SLOW, "--durations=10", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    if session.venv_backend != "none":
        session.install("ruff")
    python = python_of(session)
    session.run(python, "-m", "ruff", "check", ".")
    session.run(python, "-m", "ruff", "format", "--check", ".")


@nox.session
def ablate(session: nox.Session) -> None:
    """Every cell of an ablation matrix: ``-- MATRIX.toml [--out DIR] [--cell ID] [--jobs N]``.

    The arguments go to ``miraslab ablate``; ``--dry-run`` lists the cells and their ids.
    Cells are known only once a matrix is named, so one cell is picked by ``--cell ID``
    rather than by a parametrised session.
    """
    if not session.posargs:
        session.error("give a matrix: nox -s ablate -- MATRIX.toml [--out DIR] [--cell ID]")
    if session.venv_backend != "none":
        install_for_tests(session)
    with session.chdir(session.invoked_from):  # nox runs in the noxfile's folder; paths are the caller's
        session.run(python_of(session), "-m", "miraslab", "ablate", *session.posargs)
