"""miraslab's conformance kit as a pytest plugin.

Enable it in a plugin's ``conftest.py``::

    pytest_plugins = ["miraslab.testing.pytest_plugin"]

(explicitly, not through a ``pytest11`` entry point: that would import miraslab, and torch,
into every pytest run of every project in the environment.)  It gives:

* the fixture ``miraslab_kit``: ``miraslab_kit(kind, name, **options)`` runs every check that
  fits the component (``miraslab.testing.check_component``) and skips, with the backend's
  reason, an attention backend that cannot run here;
* ``@pytest.mark.miraslab_components(distribution="my-dist")`` on a test taking a
  ``miraslab_component`` argument parametrises it over that distribution's components
  (or every registered one without ``distribution``), one test id per ``kind:name``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .components import check_component, registered


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "miraslab_components(distribution=None, kinds=None): parametrise miraslab_component over the "
        "registry's components",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("miraslab_components")
    if marker is None or "miraslab_component" not in metafunc.fixturenames:
        return
    kwargs: dict[str, Any] = {"distribution": marker.kwargs.get("distribution")}
    if marker.kwargs.get("kinds"):
        kwargs["kinds"] = tuple(marker.kwargs["kinds"])
    components = registered(**kwargs)
    if not components:
        raise pytest.UsageError(f"miraslab_components({kwargs}): no registered component matches")
    metafunc.parametrize("miraslab_component", components, ids=[f"{k}:{n}" for k, n in components])


@pytest.fixture
def miraslab_kit(tmp_path) -> Callable[..., None]:
    """``miraslab_kit("bias", "logcosh", scale=2.0)``: the kit's checks for that component."""

    def run(kind: str, name: str, **options: Any) -> None:
        reason = check_component(kind, name, options, out_dir=tmp_path)
        if isinstance(reason, str):  # an AxisReport says what ran; a string why nothing could
            pytest.skip(f"{kind} {name!r}: {reason}")

    return run
