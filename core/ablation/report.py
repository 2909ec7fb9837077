"""A matrix's report: one row per cell (its seeds averaged, mean ± std), as markdown and
CSV, with the loss curves of every cell and a bar chart of the main metric.

Each number is read from the cell's metrics.jsonl: the last evaluation's ``val_loss``,
``val_accuracy`` (a task with answers) and memory-use metrics, and the mean ``tokens_per_s``
of its logged steps.  The main metric is the accuracy when any cell has one, else val loss.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ..report.run_metrics import read_metrics
from .matrix import Matrix
from .run import cell_state

# (column, metrics key in the last evaluation or "tokens_per_s" over the steps, format)
COLUMNS = (
    ("val_loss", "val_loss", ".4f"),
    ("val_accuracy", "val_accuracy", ".1%"),
    ("tokens_per_s", "tokens_per_s", ",.0f"),
    ("carry_gain", "memory_use/carry_gain", "+.4f"),
    ("carry_gain_share", "memory_use/carry_gain_share", "+.1%"),
    ("reset_accuracy", "memory_use/reset_accuracy", ".1%"),
)


@attrs.frozen
class Row:
    cell: str
    runs: int  # seeds with metrics
    status: str  # finished, or how many of the cell's seeds are not yet
    values: dict[str, list[float]]  # column -> one value per seed that has it
    curves: list[list[tuple[int, float]]]  # the training loss of each seed

    def mean(self, column: str) -> float | None:
        return statistics.fmean(self.values[column]) if self.values.get(column) else None

    def std(self, column: str) -> float | None:
        values = self.values.get(column, [])
        return statistics.stdev(values) if len(values) > 1 else None


@attrs.frozen
class MatrixReport:
    rows: list[Row]
    markdown: Path
    csv: Path
    plots: list[Path]


def matrix_rows(matrix: Matrix, root: Path) -> list[Row]:
    groups: dict[str, list[Path]] = {}
    for cell in matrix.cells:
        groups.setdefault(cell.seed_group, []).append(root / cell.id)
    rows = []
    for group, runs in groups.items():
        values: dict[str, list[float]] = {column: [] for column, _, _ in COLUMNS}
        curves, read, unfinished = [], 0, 0
        for run in runs:
            unfinished += cell_state(run, matrix.max_steps) != "finished"
            if not (run / "metrics.jsonl").is_file():
                continue
            metrics = read_metrics(run / "metrics.jsonl")
            read += 1
            curves.append(metrics.series("loss"))
            last = metrics.evals[-1] if metrics.evals else {}
            for column, key, _ in COLUMNS:
                if key == "tokens_per_s":
                    speeds = [value for _, value in metrics.series(key)]
                    value = statistics.fmean(speeds) if speeds else None
                else:
                    value = last.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    values[column].append(float(value))
        status = "finished" if not unfinished else f"{unfinished} of {len(runs)} unfinished"
        rows.append(Row(group, read, status, values, curves))
    return rows


def write_matrix_report(matrix: Matrix, root: Path) -> MatrixReport:
    rows = matrix_rows(matrix, root)
    root.mkdir(parents=True, exist_ok=True)
    columns = [c for c in COLUMNS if any(row.values[c[0]] for row in rows)]  # a text task has no accuracy
    markdown, table = root / "report.md", root / "report.csv"
    markdown.write_text(_markdown(matrix, rows, columns))
    with open(table, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["cell", "seeds", "status", *(f"{c}_{s}" for c, _, _ in columns for s in ("mean", "std"))]
        )
        for row in rows:
            numbers = [_plain(v) for c, _, _ in columns for v in (row.mean(c), row.std(c))]
            writer.writerow([row.cell, row.runs, row.status, *numbers])
    main = "val_accuracy" if any(c == "val_accuracy" for c, _, _ in columns) else "val_loss"
    plots = [p for p in (_loss_curves(rows, root / "loss_curves.png"), _bars(rows, main, root)) if p]
    return MatrixReport(rows, markdown, table, plots)


def _plain(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _markdown(matrix: Matrix, rows: Sequence[Row], columns: Sequence[tuple[str, str, str]]) -> str:
    lines = [
        f"# Ablation {matrix.name}",
        "",
        f"Base recipe `{matrix.base.name}`, {len(matrix.cells)} runs; each number is the mean ± std over "
        "a cell's seeds, from its last evaluation (tokens/s: the mean of its logged steps).",
        "",
        "| cell | seeds | status | " + " | ".join(c for c, _, _ in columns) + " |",
        "|" + "---|" * (3 + len(columns)),
    ]
    for row in rows:
        cells = []
        for column, _, spec in columns:
            mean, std = row.mean(column), row.std(column)
            text = "–" if mean is None else format(mean, spec)
            if std is not None:
                text += f" ± {format(std, spec.lstrip('+'))}"
            cells.append(text)
        lines.append(f"| {row.cell} | {row.runs} | {row.status} | " + " | ".join(cells) + " |")
    lines += ["", "![loss curves](loss_curves.png)", "", "![main metric](main_metric.png)", ""]
    return "\n".join(lines)


def _figure(width: float = 7.0, height: float = 3.6) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # the Agg canvas: no display, no pyplot state

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.subplots()


def _loss_curves(rows: Sequence[Row], path: Path) -> Path | None:
    if not any(curve for row in rows for curve in row.curves):
        return None
    figure, axis = _figure()
    colours = [f"C{i % 10}" for i in range(len(rows))]
    for row, colour in zip(rows, colours, strict=True):
        for index, curve in enumerate(c for c in row.curves if c):
            steps, losses = zip(*curve, strict=True)
            axis.plot(
                steps, losses, color=colour, linewidth=1, alpha=0.8, label=row.cell if index == 0 else None
            )
    axis.set(xlabel="step", ylabel="train loss (nats)", title="loss per cell")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    figure.savefig(path, format="png")
    return path


def _bars(rows: Sequence[Row], column: str, root: Path) -> Path | None:
    shown = [row for row in rows if row.mean(column) is not None]
    if not shown:
        return None
    scale = 100 if column == "val_accuracy" else 1
    figure, axis = _figure(width=max(5.0, 0.8 * len(shown) + 2))
    axis.bar(
        range(len(shown)),
        [scale * row.mean(column) for row in shown],
        yerr=[scale * (row.std(column) or 0.0) for row in shown],
        capsize=4,
        color="tab:blue",
    )
    axis.set_xticks(range(len(shown)), [row.cell for row in shown], rotation=30, ha="right", fontsize="small")
    axis.set(
        ylabel="val accuracy (%)" if scale == 100 else "val loss (nats)",
        title=f"{column}, mean ± std over seeds",
    )
    axis.grid(alpha=0.3, axis="y")
    path = root / "main_metric.png"
    figure.savefig(path, format="png")
    return path
