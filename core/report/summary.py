"""summary.md: one sentence on whether the memory is used, with the numbers, then the tables.

The verdict is the trainer's (``miraslab.memory_use.memory_is_used``) on the last evaluation
that measured the memory-use metric: on a task with answers the memory is used when resetting
its state at every chunk costs at least 5 accuracy points, otherwise when it costs at least
1 % of the validation loss (``memory_use/carry_gain_share``).  The seeds' failure, a reset
that changed perplexity by 1 in 750, is a share of about 0.02 %.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..memory_use import USED_POINTS, USED_SHARE, memory_is_used
from .initial_weights import InitHistory
from .run_metrics import CARRY_GAIN, CARRY_SHARE, READ_GAIN, RunMetrics, number, short_key

RESET_ACCURACY, ZERO_ACCURACY = "memory_use/reset_accuracy", "memory_use/zero_accuracy"


def verdict(metrics: RunMetrics) -> tuple[str, str]:
    """("used" | "not used" | "unknown", the sentence that says so with the numbers)."""
    measured = metrics.memory_use
    if not measured:
        return "unknown", (
            "Whether the memory is used is not known: the run logged no `memory_use/carry_gain` (a model "
            "without a neural memory, `train.memory_use = false`, or no evaluation yet); "
            "`miraslab probe RUN --memory-ablation` measures it on the last checkpoint."
        )
    last = measured[-1]
    gain, loss = number(last[CARRY_GAIN]), number(last.get("val_loss")) or 0.0
    share = number(last.get(CARRY_SHARE))
    share = share if share is not None else (gain / loss if loss else 0.0)
    read = number(last.get(READ_GAIN))
    numbers = (
        f"at step {last['step']} resetting its state at every chunk changes the validation loss by "
        f"{gain:+.4f} nats ({share:+.2%} of {loss:.4f})"
    )
    accuracy, reset = number(last.get("val_accuracy")), number(last.get(RESET_ACCURACY))
    if accuracy is not None and reset is not None:
        numbers += f" and the accuracy from {accuracy:.1%} to {reset:.1%}"
    if read is not None:
        numbers += f"; zeroing its read changes the loss by {read:+.4f} nats"
    rule = (
        f"{USED_POINTS * 100:.0f} accuracy points" if reset is not None else f"{USED_SHARE:.0%} of the loss"
    )
    if memory_is_used({**last, CARRY_SHARE: share}):
        return "used", f"**The memory is used**: {numbers} (at least {rule})."
    local = (
        ": its read matters but it carries nothing across chunks (a local feature)"
        if read is not None and read > max(abs(gain), 1e-3) * 10
        else ""
    )
    return "not used", f"**The memory is not used**: {numbers}, less than {rule}{local}."


def _cell(value: Any, spec: str) -> str:
    value = number(value)
    return "—" if value is None else format(value, spec)


def _memory_use_table(metrics: RunMetrics) -> list[str]:
    rows = [
        "| step | val_loss | val_accuracy | carry_gain (nats) | share of loss | read_gain (nats) |",
        "|---|---|---|---|---|---|",
    ]
    for record in metrics.evals:
        share = number(record.get(CARRY_SHARE))
        rows.append(
            f"| {record.get('step')} | {_cell(record.get('val_loss'), '.4f')} | "
            f"{_cell(record.get('val_accuracy'), '.1%')} | {_cell(record.get(CARRY_GAIN), '+.4f')} | "
            f"{'—' if share is None else format(share, '+.2%')} | {_cell(record.get(READ_GAIN), '+.4f')} |"
        )
    return rows


def _gate_table(metrics: RunMetrics) -> list[str]:
    from .plots import is_gate

    rows = []
    for layer, keys in metrics.layer_keys().items():
        for key in keys:
            name = short_key(key, layer)
            series = [v for _, v in metrics.series(key)]
            if is_gate(name) and series:
                rows.append(
                    f"| {layer} | {name} | {series[0]:.4f} | {series[-1]:.4f} | {min(series):.4f} | {max(series):.4f} |"
                )
    if not rows:
        return ['No gate statistics were logged (add `[[monitors]] name = "memory_stats"` to the recipe).']
    return ["| layer | gate | first | last | min | max |", "|---|---|---|---|---|---|", *rows]


def _init_table(history: InitHistory) -> list[str]:
    if not history.stats:
        lines = ["No learned W_init was found in the run's checkpoints."]
    else:
        lines = [
            "| memory | checkpoint step | norm | effective rank | top-1 share | relative change |",
            "|---|---|---|---|---|---|",
        ]
        for s in history.stats:
            lines.append(
                f"| {s.memory} | {s.step} | {s.norm:.4g} | {_cell(s.effective_rank, '.2f')} | "
                f"{_cell(s.top1_share, '.1%')} | {_cell(s.relative_change, '.2%')} |"
            )
    return lines + [f"Skipped checkpoint {reason}" for reason in history.skipped]


def summary_markdown(
    run_dir: Path,
    metrics: RunMetrics,
    history: InitHistory,
    plots: dict[str, Path | None],
) -> str:
    _, sentence = verdict(metrics)
    lines = [f"# Report: {run_dir}", "", sentence, ""]
    if metrics.steps:
        last = metrics.steps[-1]
        lines += [
            f"Trained to step {last.get('step')}, last training loss {_cell(last.get('loss'), '.4f')}.",
            "",
        ]
    warnings = [e for e in metrics.events if e.get("event") == "memory_use_warning"]
    if warnings:
        lines += [*(f"- warning at step {e.get('step')}: {e.get('message')}" for e in warnings), ""]
    lines += ["## Memory use at each evaluation", "", *_memory_use_table(metrics)]
    lines += ["", "## Gates per layer (first, last, min and max logged value)", "", *_gate_table(metrics)]
    lines += ["", "## Learned W_init across checkpoints", "", *_init_table(history)]
    lines += ["", "## Plots", ""]
    for name, path in plots.items():
        lines.append(f"![{name}]({path.name})" if path is not None else f"- {name}: nothing logged to plot")
    return "\n".join(lines) + "\n"
