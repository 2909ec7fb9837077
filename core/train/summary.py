"""How a run ends: its final line (how far it got, where its files are), or the error of a stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import RunStopped


def summary_line(summary: dict[str, Any], path: Path) -> str:
    loss = summary["final_loss"]
    val = summary["best_val_loss"]
    parts = [
        f"done: step {summary['step']}/{summary['total_steps']}",
        f"{summary['tokens']:,} tokens",
        f"{summary['wall_seconds']:.1f}s",
    ]
    if loss is not None:
        parts.append(f"final loss {loss:.4f}")
    if val is not None:
        parts.append(f"best val_loss {val:.4f}")
    return ", ".join(parts) + f"; run directory {path}"


def stopped(step: int, reason: str, cause: str, last_checkpoint: Path | None, run_dir: Path) -> RunStopped:
    """The error a stopped run ends with: why, and the checkpoint it keeps (or how to start again)."""
    if last_checkpoint is not None:
        kept = f"the last good checkpoint is {last_checkpoint}"
    else:
        kept = (
            f"no checkpoint was written; `miraslab train --resume {run_dir}` starts the run again from step 0"
        )
    return RunStopped(f"run stopped at step {step}: {reason}; {kept}", cause)
