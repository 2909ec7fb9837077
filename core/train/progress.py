"""What the trainer prints: a rich progress bar on a terminal, plain lines otherwise.

The bar shows step, loss, tokens/s and ETA.  When output is not a terminal (CI, a log
file, nohup) the bar stays quiet and only events are printed: start, stage switches,
validation, checkpoints, the final summary.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    def __init__(self, total: int, start: int, enabled: bool = True):
        self.console = Console(stderr=True)
        self.interactive = enabled and self.console.is_terminal
        self.enabled = enabled
        self.progress: Progress | None = None
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} tok/s"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=total, completed=start, loss="-", speed="-")
            self.progress.start()

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=step,
                loss=f"{metrics['loss']:.4f}",
                speed=f"{metrics['tokens_per_s']:,.0f}",
            )

    def event(self, message: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
