"""What the trainer hands every event hook: the run as a monitor sees it.

Its public shape is ``miraslab.api.RunContext`` (``hookspecs``): the recipe, the run
directory, the unwrapped model, the step, a way to stop the run, and the run's own ways to
print a line, log a record, average over processes and cast to its precision, so a monitor
measures and reports exactly as the trainer does.  A context built alone (a test driving a
monitor by hand) prints to stderr, logs to ``out_dir/metrics.jsonl`` and averages nothing.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import attrs
import torch

from ..recipe.schema import Recipe
from .distributed import Distributed
from .progress import TrainingProgress
from .run_dir import RunDir


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast a run's forwards run under: bf16 on CUDA for "auto", bf16 for "bf16", else none."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@attrs.define
class RunContext:
    """What event hooks see of the run."""

    recipe: Recipe
    out_dir: Path
    model: torch.nn.Module
    step: int = 0
    stage: str = ""
    stop_reason: str | None = None
    stop_cause: str = "stopped"
    optimizer: Any = None  # the optimizer stepping ``model`` (the precision guard reads its state)
    rank: int = 0  # under torchrun; monitors that write files (tensorboard, wandb) write on rank 0
    world_size: int = 1
    dist: Distributed | None = None  # None: one process
    progress: TrainingProgress | None = None  # None: lines go to stderr
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
    held: list[tuple[Callable[[Any], None], Any]] | None = None  # see ``held_back``

    def request_stop(self, reason: str, cause: str = "stopped") -> None:
        """Stop after this step; ``cause`` (a key of ``STOP_EXIT_CODES``) picks the exit code."""
        if self.stop_reason is None:
            self.stop_reason, self.stop_cause = reason, cause

    def say(self, line: str) -> None:
        """One line on the console, above the progress bar (quiet with --quiet and off rank 0)."""
        if self.held is not None:
            self.held.append((self.say, line))
        elif self.progress is not None:
            self.progress.event(line)
        elif self.rank == 0:
            print(line, file=sys.stderr, flush=True)

    def log(self, record: dict[str, Any]) -> None:
        """One record appended to metrics.jsonl (by rank 0)."""
        if self.held is not None:
            self.held.append((self.log, record))
        elif self.rank == 0:
            RunDir(self.out_dir).log(record)

    def records(self) -> list[dict[str, Any]]:
        """Every record metrics.jsonl holds, those of the run's earlier processes included."""
        return RunDir(self.out_dir).metrics()

    def mean(self, value: float) -> float:
        """``value``'s mean over the processes (one collective): a measure on this rank's shard."""
        return self.dist.mean(value) if self.dist is not None else value

    def precision(self) -> AbstractContextManager:
        """The run's precision for a forward: bf16 autocast on CUDA by default, none on CPU."""
        return self.autocast()

    @contextlib.contextmanager
    def held_back(self) -> Iterator[None]:
        """Lines and records hooks give inside wait until the block ends: the trainer's own
        record of an evaluation comes first, then what monitors said about it."""
        self.held = []
        try:
            yield
        finally:
            held, self.held = self.held, None
            for write, item in held:
                write(item)
