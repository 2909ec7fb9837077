"""The memory-use metric and its floor: what the memory's carried state is worth, measured at
every evaluation (the one number the seeds found near zero only after days).

Each validation pass runs its batches twice more on the unwrapped model, with every memory's
state reset at each chunk (nothing carried across) and with its read zeroed:

    memory_use/carry_gain       = loss(reset) - loss(carried)    nats the carried state is worth
    memory_use/carry_gain_share = carry_gain / loss(carried)
    memory_use/read_gain        = loss(zeroed) - loss(carried)

and on a task with answers the accuracy under each (``memory_use/reset_accuracy``,
``zero_accuracy``).  A share below ``min_share`` for ``patience`` evaluations in a row warns,
or stops the run (cause ``memory_unused``).  The run ends with one sentence on the last
evaluation, ``memory_use`` and ``memory_used`` in summary.json, and memory_use.png.

Every run has this monitor unless ``train.memory_use = false``; the ``train.memory_use_*``
keys are its options, so a recipe need not name it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

import miraslab
from miraslab.api import (
    evaluate_by_memory,
    memories_of,
    memory_is_used,
    memory_use_verdict,
    plot_memory_use,
    recall_carry_gain,
)

PLOT = "memory_use.png"
MODES = ("reset", "zero")


@attrs.frozen
class MemoryUseParams:
    min_share: float = miraslab.param(
        0.0,
        ge=0,
        doc="warn (or stop) when carry_gain_share stays below this for patience evaluations; 0 never does",
    )
    patience: int = miraslab.param(3, ge=1, doc="evaluations in a row below min_share")
    action: str = miraslab.param(
        "warn",
        choices=("warn", "stop"),
        doc="on a low carry gain: a warning, or stop (the last checkpoint kept)",
    )


class MemoryUse:
    """Measures the carry gain at each evaluation, holds it to its floor, and says at the end
    whether the memory is used."""

    def __init__(self, params: MemoryUseParams):
        self.params = params
        self.low_evals = 0  # evaluations in a row below min_share
        self.last: dict[str, Any] | None = None  # the last evaluation's metrics

    # tryfirst: the monitors that send metrics on (tensorboard, wandb) see what it adds
    @miraslab.hookimpl(tryfirst=True)
    def on_eval(self, run, metrics, batches):
        self.last = metrics
        if not memories_of(run.model):
            return None
        with run.precision():
            ablated = evaluate_by_memory(run.model, batches, MODES)
        loss = metrics["val_loss"]
        reset, zero = (run.mean(ablated[mode]["loss"]) for mode in MODES)
        metrics["memory_use/carry_gain"] = reset - loss
        metrics["memory_use/carry_gain_share"] = (reset - loss) / loss
        metrics["memory_use/read_gain"] = zero - loss
        if "val_accuracy" in metrics:  # the proof a recall task gives: accuracy without the carried state
            metrics["memory_use/reset_accuracy"] = run.mean(ablated["reset"]["accuracy"])
            metrics["memory_use/zero_accuracy"] = run.mean(ablated["zero"]["accuracy"])
        else:  # text: the carry gain on beyond-window recall hits (miraslab.long_range)
            with run.precision():
                metrics.update({k: run.mean(v) for k, v in recall_carry_gain(run.model, batches).items()})
        self._hold_to_the_floor(run, metrics)
        return (
            f"memory carry gain {metrics['memory_use/carry_gain']:+.4f} nats "
            f"({metrics['memory_use/carry_gain_share']:+.1%})"
        )

    def _hold_to_the_floor(self, run, metrics: dict[str, Any]) -> None:
        """Warn or stop once the carry gain has stayed below its floor for the patience."""
        floor, share = self.params.min_share, metrics["memory_use/carry_gain_share"]
        if not floor:
            return
        self.low_evals = self.low_evals + 1 if share < floor else 0
        if self.low_evals < self.params.patience:
            return
        diagnosis = (
            f"memory_use/carry_gain_share {share:.2%} below train.memory_use_min_share {floor:.2%} for "
            f"{self.low_evals} evaluations (carry gain {metrics['memory_use/carry_gain']:+.4f} nats at "
            f"step {run.step}): the memory carries nothing across chunks"
        )
        run.log({"step": run.step, "event": "memory_use_warning", "message": diagnosis})
        if self.params.action == "stop":
            run.request_stop(diagnosis, "memory_unused")
        else:
            run.say(f"warning: {diagnosis}")

    @miraslab.hookimpl
    def on_summary(self, run, summary):
        if self.last is not None and "memory_use/carry_gain" in self.last:
            summary["memory_use"] = {key: value for key, value in self.last.items() if key != "event"}
            summary["memory_used"] = memory_is_used(self.last)

    # tryfirst: the plot is on disk before the other monitors' end (wandb uploads it)
    @miraslab.hookimpl(tryfirst=True)
    def on_train_end(self, run, summary):
        """The run's last word: is its memory used (one sentence) and the picture over the run."""
        if run.rank != 0 or "memory_use" not in summary:
            return
        run.say(memory_use_verdict(summary["memory_use"]))
        try:
            plot = plot_memory_use(run.records(), Path(run.out_dir) / PLOT)
        except (OSError, ImportError) as error:  # the run is saved; a missing picture is not fatal
            run.say(f"memory-use plot not written: {error}")
            return
        if plot is not None:
            run.say(f"plot: {plot}")


@miraslab.hookimpl
def register_monitors(register):
    register("memory_use", MemoryUse, MemoryUseParams)
