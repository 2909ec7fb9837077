"""What the ``tensorboard`` and ``wandb`` monitors share: their shape (``Tracker``), which
metrics are scalars, the recipe flattened to hyper-parameters, the report's plots, and the
missing-package line.

Both send what ``metrics.jsonl`` holds, under the same keys and at the same steps: every
logged step and validation pass (their hooks run after every other monitor's, so what
``memory_stats`` and the regularisers add is there too).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import miraslab
from miraslab.api import MiraslabError, MissingPackageError, build_report

INSTALL = "pip install 'miraslab[tracking]'"


def require(package: str, monitor: str) -> None:
    """Fail in one line, when the monitor is built, if ``package`` is not installed."""
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        found = False
    if not found:
        raise MissingPackageError(f"monitor {monitor!r} needs the {package} package: {INSTALL}")


class Tracker:
    """A monitor that sends a run to a tracking service: it needs ``package`` when it is built,
    opens its run on rank 0 only (``start``) and sends every numeric metric of each logged step
    and validation pass (``send``), after every other monitor has added its entries."""

    package: ClassVar[str]  # what it needs installed
    monitor: ClassVar[str]  # its registered name, as the missing-package line says it

    def __init__(self, params: Any):
        require(self.package, self.monitor)
        self.params = params

    @miraslab.hookimpl
    def on_train_start(self, run):
        if run.rank == 0:
            self.start(run)

    # trylast: after every other monitor has added its entries to ``metrics``
    @miraslab.hookimpl(trylast=True)
    def on_step_end(self, run, metrics):
        self.send(int(metrics.get("step", run.step)), dict(scalars(metrics)))

    @miraslab.hookimpl(trylast=True)
    def on_eval(self, run, metrics):
        self.send(int(metrics.get("step", run.step)), dict(scalars(metrics)))

    def start(self, run: Any) -> None:
        raise NotImplementedError

    def send(self, step: int, values: dict[str, float]) -> None:
        """Send ``values`` at ``step`` (nothing before ``start``, or on other ranks)."""
        raise NotImplementedError


def scalars(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """Each numeric metric but the step itself (strings such as ``stage`` are left out)."""
    for key, value in metrics.items():
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
            yield key, float(value)


def flat_hparams(data: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested recipe dict as scalars under dotted keys, ``monitors[0].name`` for an array of
    tables (TensorBoard's hparams take neither tables nor lists: a list of scalars becomes its
    JSON text); ``None`` is left out, as in recipe.toml."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
            for index, table in enumerate(value):
                out.update(flat_hparams(table, f"{name}[{index}]."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value, default=str)
        elif isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
            out[name] = value
        elif value is not None:
            out[name] = str(value)
    return out


def report_plots(run: Any) -> dict[str, Path]:
    """The PNGs of ``miraslab report`` (written to RUN/report) at the end of ``run``, by file
    stem; drawn once for both monitors of one run.  A report that cannot be drawn is one
    warning, not a failed run."""
    out_dir = Path(run.out_dir)
    try:  # the run's state: its directory, step and metrics.jsonl as they are now
        stat = (out_dir / "metrics.jsonl").stat()
        key: tuple = (out_dir.resolve(), run.step, stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = (out_dir.resolve(), run.step, None, None)
    if _drawn.get("key") != key:
        try:
            report = build_report(out_dir)
        except (OSError, ImportError, MiraslabError) as error:
            print(f"warning: the report's plots were not sent: {error}", file=sys.stderr)
            return {}
        plots = {path.stem: path for path in report.plots.values() if path is not None}
        _drawn.update(key=key, plots=plots)
    return _drawn["plots"]


_drawn: dict[str, Any] = {}  # the last report drawn: the run state it was drawn from, its PNGs
