"""A run's metrics.jsonl as series: training loss, evaluations and per-layer monitor values.

Records (see ``miraslab.train.trainer``): a training step has ``loss`` and no ``event``; an
evaluation has ``event = "eval"`` with ``val_loss`` (``val_accuracy`` for a task with answers)
and the memory-use metric ``memory_use/carry_gain``, ``carry_gain_share``, ``read_gain``;
``memory_use_warning`` and ``stage`` are events too.  Monitors add keys to training steps:
``memory_stats`` writes ``memory/<layer>/<name>`` and ``memory/<layer>/<memory>/<name>``.
A value JSON could not hold (NaN, inf) is stored as its repr string and read back as a float.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs

from ..errors import MiraslabError
from ..train.run_dir import RunDir

CARRY_GAIN, CARRY_SHARE, READ_GAIN = (
    "memory_use/carry_gain",
    "memory_use/carry_gain_share",
    "memory_use/read_gain",
)
LAYER_PREFIX = "memory/"

Series = list[tuple[int, float]]


@attrs.frozen
class RunMetrics:
    steps: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    events: list[dict[str, Any]]

    def series(self, key: str, records: str = "steps") -> Series:
        """(step, value) of every record that holds ``key`` as a number."""
        found = []
        for record in getattr(self, records):
            value = number(record.get(key))
            if value is not None:
                found.append((int(record.get("step", 0)), value))
        return found

    def layer_keys(self) -> dict[str, list[str]]:
        """Monitor keys by layer: ``{"L0": ["memory/L0/gate_mean", ...]}``, in first-seen order."""
        layers: dict[str, dict[str, None]] = {}
        for record in self.steps:
            for key in record:
                if key.startswith(LAYER_PREFIX) and key.count("/") >= 2:
                    layers.setdefault(key.split("/")[1], {})[key] = None
        return {layer: list(keys) for layer, keys in layers.items()}

    @property
    def memory_use(self) -> list[dict[str, Any]]:
        """The evaluations that measured the memory-use metric."""
        return [record for record in self.evals if number(record.get(CARRY_GAIN)) is not None]


def number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):  # written by RunDir.log as repr
        return float(value)
    return None


def read_metrics(path: Path) -> RunMetrics:
    """Parse ``metrics.jsonl`` as the trainer reads it (``RunDir.metrics``: a torn last line,
    from a run killed mid-write, is dropped with a warning)."""
    if not path.is_file():
        raise MiraslabError(
            f"{path.parent}: no {path.name} here; is this a run directory written by miraslab train?"
        )
    steps, evals, events = [], [], []
    for record in RunDir(path.parent).metrics():
        event = record.get("event")
        if event is None and "loss" in record:
            steps.append(record)
        elif event == "eval":
            evals.append(record)
        elif event is not None:
            events.append(record)
    return RunMetrics(steps, evals, events)


def short_key(key: str, layer: str) -> str:
    """``memory/L0/memory/lr_mean`` -> ``memory/lr_mean`` within its layer's plot."""
    return key.removeprefix(f"{LAYER_PREFIX}{layer}/")


def finite(values: Series) -> Series:
    return [(step, value) for step, value in values if math.isfinite(value)]
