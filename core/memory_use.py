"""Whether a run's memory is used, in one sentence and one picture, from its evaluations.

Every evaluation of a model with a memory logs ``memory_use/*`` (the memory_use monitor): the loss
with the memory's state carried, reset at every chunk and with its read zeroed, and for a task
with answers the accuracy under each.  The verdict reads the last of them; the plot draws all
of them over the run, so a memory that never starts to carry shows as two curves that never
part.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# a carried state worth less than 1 % of the loss is not in use: the text quickstart's is
# 0.0 %, a memory that solves MQAR's far queries is worth several times the loss
USED_SHARE = 0.01
# on a task with answers: accuracy points the carried state must be worth
USED_POINTS = 0.05
RECALL_GAIN = "memory_use/recall_carry_gain"  # text runs: the gain on beyond-window recall hits


def memory_is_used(metrics: dict[str, Any]) -> bool:
    if "memory_use/reset_accuracy" in metrics:
        return metrics["val_accuracy"] - metrics["memory_use/reset_accuracy"] >= USED_POINTS
    return metrics["memory_use/carry_gain_share"] >= USED_SHARE


def verdict(metrics: dict[str, Any]) -> str:
    """One sentence: is the memory used at this evaluation, with the numbers that say so."""
    step = metrics.get("step", "?")
    used = memory_is_used(metrics)
    share = metrics["memory_use/carry_gain_share"]
    # a loss near 0 makes the share huge: say how many losses the gain is worth instead
    of_loss = f"{share:+.1%} of the loss" if abs(share) < 10 else f"{share:,.0f}x the loss"
    gain = f"carry gain {metrics['memory_use/carry_gain']:+.4f} nats ({of_loss})"
    if "memory_use/reset_accuracy" in metrics:
        carried, reset = metrics["val_accuracy"], metrics["memory_use/reset_accuracy"]
        numbers = (
            f"accuracy {carried:.1%} with its state carried, {reset:.1%} with it reset at every chunk "
            f"({100 * (reset - carried):+.1f} points), {metrics['memory_use/zero_accuracy']:.1%} with its "
            f"read zeroed; {gain}"
        )
    else:
        numbers = f"{gain}; reading it is worth {metrics['memory_use/read_gain']:+.4f} nats"
        if RECALL_GAIN in metrics:  # text: what it carries where only it can reach (miraslab.long_range)
            numbers += (
                f"; on beyond-window recall hits ({metrics['memory_use/recall_hits_share']:.1%} of the tokens) "
                f"the carried state is worth {metrics[RECALL_GAIN]:+.4f} nats"
            )
    if used:
        return f"the memory is used at step {step}: {numbers}"
    return f"the memory carries nothing across chunks at step {step}: {numbers}"


def plot_memory_use(records: Iterable[dict[str, Any]], path: Path) -> Path | None:
    """A PNG of the memory-use metrics over evaluations: accuracy carried / reset / zeroed on a
    task with answers, else the loss under each.  None when no record has them."""
    records = [r for r in records if "memory_use/carry_gain" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    accuracy = "memory_use/reset_accuracy" in records[-1]
    fig, (main, gain) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    if accuracy:
        rows = [r for r in records if "memory_use/reset_accuracy" in r]
        steps = [r["step"] for r in rows]
        main.plot(steps, [100 * r["val_accuracy"] for r in rows], "o-", label="memory carried")
        main.plot(
            steps, [100 * r["memory_use/reset_accuracy"] for r in rows], "s-", label="reset every chunk"
        )
        main.plot(steps, [100 * r["memory_use/zero_accuracy"] for r in rows], "^-", label="read zeroed")
        main.set_ylabel("accuracy on the answers (%)")
        main.set_ylim(-2, 102)
    else:
        rows = records
        main.plot(steps, [r["val_loss"] for r in rows], "o-", label="memory carried")
        main.plot(
            steps, [r["val_loss"] + r["memory_use/carry_gain"] for r in rows], "s-", label="reset every chunk"
        )
        main.plot(steps, [r["val_loss"] + r["memory_use/read_gain"] for r in rows], "^-", label="read zeroed")
        main.set_ylabel("validation loss (nats)")
    main.set_xlabel("step")
    main.set_title("validation, with and without the memory")
    main.legend(loc="center right")
    gain.plot(steps, [r["memory_use/carry_gain"] for r in rows], "o-", color="C3", label="every token")
    recall = [r for r in rows if RECALL_GAIN in r]
    if recall:
        gain.plot([r["step"] for r in recall], [r[RECALL_GAIN] for r in recall], "s--", color="C4",
                  label="beyond-window recall hits")  # fmt: skip
        gain.legend(loc="best", fontsize=8)
    gain.axhline(0.0, color="grey", linewidth=0.8)
    gain.set_xlabel("step")
    gain.set_ylabel("nats")
    gain.set_title("carry gain: loss(reset) − loss(carried)")
    fig.suptitle(verdict(records[-1]).split(":")[0], fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
