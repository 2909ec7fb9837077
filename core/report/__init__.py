"""``miraslab report``: plots and a summary of a training run, from its metrics and checkpoints.

``build_report(run_dir, out_dir)`` writes into ``out_dir`` (default ``RUN/report``)::

    loss.png          training loss, validation loss (and accuracy) over steps
    gates.png         every gate's mean per layer over steps (memory_stats)
    memory_norms.png  memory and momentum state norms per layer over steps (memory_stats)
    memory_use.png    over evaluations: accuracy (or loss) with the memory carried, reset and
                      zeroed, and the carry gain (``miraslab.memory_use.plot_memory_use``)
    w_init.png        per memory: W_init's norm, effective rank, top-1 share, relative change
    summary.md        whether the memory is used, in one sentence with the numbers; the tables

A plot with nothing to draw (no monitor, no evaluation) is left out and summary.md says so.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from ..memory_use import plot_memory_use
from ..train.run_dir import METRICS_FILE
from .initial_weights import init_history
from .plots import gates_plot, init_plot, loss_plot, memory_norms_plot
from .run_metrics import read_metrics
from .summary import summary_markdown, verdict


@attrs.frozen
class Report:
    out_dir: Path
    verdict: str  # "used", "not used" or "unknown"
    sentence: str
    plots: dict[str, Path | None]
    summary: Path


def build_report(run_dir: Path, out_dir: Path | None = None) -> Report:
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    metrics = read_metrics(run_dir / METRICS_FILE)
    history = init_history(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "loss": loss_plot(metrics, out),
        "gates": gates_plot(metrics, out),
        "memory norms": memory_norms_plot(metrics, out),
        "memory use": plot_memory_use(metrics.evals, out / "memory_use.png"),
        "W_init": init_plot(history, out),
    }
    summary = out / "summary.md"
    summary.write_text(summary_markdown(run_dir, metrics, history, plots), encoding="utf-8")
    used, sentence = verdict(metrics)
    return Report(out, used, sentence, plots, summary)
