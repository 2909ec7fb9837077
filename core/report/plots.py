"""The report's PNGs, drawn with matplotlib's object API (``Figure``: the Agg canvas, no
pyplot state and no display, so it runs on a headless server and inside a notebook alike).

Each function returns the path written, or None when the run logged nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .initial_weights import InitHistory
from .run_metrics import RunMetrics, finite, short_key

DPI = 100


def _figure(rows: int = 1, columns: int = 1, *, width: float = 7.0, height: float = 3.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, [axis for row in axes for axis in row]


def _line(axis: Any, series: Sequence[tuple[int, float]], label: str, **style: Any) -> None:
    series = finite(list(series))
    if series:
        steps, values = zip(*series, strict=True)
        axis.plot(steps, values, label=label, **style)


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, format="png")
    return path


def loss_plot(metrics: RunMetrics, out: Path) -> Path | None:
    train, val = metrics.series("loss"), metrics.series("val_loss", "evals")
    if not train and not val:
        return None
    figure, (axis,) = _figure()
    _line(axis, train, "train loss", linewidth=1, alpha=0.8)
    _line(axis, val, "val loss", marker="o", linewidth=1.5)
    axis.set(xlabel="step", ylabel="loss (nats)", title="loss")
    axis.legend()
    axis.grid(alpha=0.3)
    accuracy = metrics.series("val_accuracy", "evals")
    if accuracy:  # a task with answers: accuracy on a second axis
        twin = axis.twinx()
        _line(twin, [(s, 100 * a) for s, a in accuracy], "val accuracy", color="tab:green", marker="s")
        twin.set_ylabel("val accuracy (%)")
        twin.legend(loc="center right")
    return _save(figure, out / "loss.png")


def _per_layer(
    metrics: RunMetrics, out: Path, name: str, title: str, wanted: Any, *, log: bool = False
) -> Path | None:
    layers = {
        layer: [k for k in keys if wanted(short_key(k, layer))]
        for layer, keys in metrics.layer_keys().items()
    }
    layers = {layer: keys for layer, keys in layers.items() if keys}
    if not layers:
        return None
    figure, axes = _figure(len(layers), 1, height=2.8)
    for axis, (layer, keys) in zip(axes, layers.items(), strict=True):
        for key in keys:
            _line(axis, metrics.series(key), short_key(key, layer), linewidth=1.2)
        axis.set(title=f"{title}, layer {layer}", xlabel="step")
        if log and any(v > 0 for k in keys for _, v in finite(metrics.series(k))):
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside, never over a line
    return _save(figure, out / name)


def is_gate(key: str) -> bool:
    """Gate values: the MAG/MAC gate, each data-dependent gate's mean, TNT's mixer α."""
    return key.endswith("_mean") or key == "mixer_alpha"


def is_norm(key: str) -> bool:
    return key.endswith("_norm")


def gates_plot(metrics: RunMetrics, out: Path) -> Path | None:
    return _per_layer(metrics, out, "gates.png", "gates", is_gate)


def memory_norms_plot(metrics: RunMetrics, out: Path) -> Path | None:
    return _per_layer(metrics, out, "memory_norms.png", "memory state norms", is_norm, log=True)


def init_plot(history: InitHistory, out: Path) -> Path | None:
    if not history.stats:
        return None
    figure, axes = _figure(2, 2, width=5.0, height=3.0)
    panels = (
        ("norm", "‖W_init‖ (Frobenius)"),
        ("effective_rank", "effective rank"),
        ("top1_share", "top-1 singular-value share"),
        ("relative_change", "relative change from the previous checkpoint"),
    )
    for axis, (field, title) in zip(axes, panels, strict=True):
        for memory in history.memories():
            points = [(s.step, getattr(s, field)) for s in history.stats if s.memory == memory]
            points = [(step, v) for step, v in points if v is not None and math.isfinite(v)]
            _line(axis, points, memory, marker="o")
        axis.set(title=title, xlabel="checkpoint step")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    return _save(figure, out / "w_init.png")
