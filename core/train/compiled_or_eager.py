"""``train.compile``: the model under ``torch.compile``, or eager when compiling fails.

A run asked to compile should not die for want of a compiler toolchain or on code dynamo
cannot trace: it says so once and runs eager, the same numbers a little slower.
"""

from __future__ import annotations

from typing import Any

import torch

from .progress import TrainingProgress


class CompiledOrEager(torch.nn.Module):
    """``torch.compile(model)``, falling back to the eager model (once, with a warning) when
    compiling fails: no compiler toolchain, or code dynamo cannot trace."""

    def __init__(self, model: torch.nn.Module, progress: TrainingProgress, backend: Any = "inductor"):
        super().__init__()
        self.module = model
        # static shapes: each new shape (an evaluation batch, a stage's sequence length) gets a
        # graph of its own.  Under the default, the second shape recompiles with symbolic
        # sizes, and the memory's loops over chunks make that compile take minutes (a
        # memory layer at width 16, seq 12 then 20: over 9 minutes, against 18 s static)
        self.compiled = torch.compile(model, backend=backend, dynamic=False)
        self.progress = progress
        self.use_compiled = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.use_compiled:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:
                self.use_compiled = False
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.progress.event(
                    f"warning: torch.compile failed ({type(exc).__name__}: {first_line}); running eager"
                )
        return self.module(*args, **kwargs)


def compiled_or_eager(model: torch.nn.Module, progress: TrainingProgress) -> torch.nn.Module:
    """``CompiledOrEager(model)``, or ``model`` itself where torch.compile cannot even start."""
    try:
        return CompiledOrEager(model, progress)
    except Exception as exc:
        progress.event(f"warning: torch.compile is unavailable ({type(exc).__name__}: {exc}); running eager")
        return model
