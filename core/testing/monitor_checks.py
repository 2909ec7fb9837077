"""The kit for monitors: every method marked ``@miraslab.hookimpl`` names a trainer event, and
the monitor runs its events on a tiny model for a few steps without stopping a healthy run."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pluggy
import torch

from .. import api, hookspecs
from ..registry import Registry, get_registry
from .failure import KitFailure
from .model_checks import VOCAB, tiny_model


@attrs.define
class KitRun:
    """What the trainer hands event hooks (``miraslab.api.RunContext``), for a run the kit drives."""

    model: torch.nn.Module
    out_dir: Path
    step: int = 0
    optimizer: Any = None
    recipe: Any = None
    stop_reason: str | None = None
    stop_cause: str = "stopped"
    rank: int = 0
    world_size: int = 1

    said: list[str] = attrs.field(factory=list)  # what the monitor printed (``say``)
    logged: list[dict[str, Any]] = attrs.field(factory=list)  # what it logged (``log``)

    def request_stop(self, reason: str, cause: str = "stopped") -> None:
        if self.stop_reason is None:
            self.stop_reason, self.stop_cause = reason, cause

    def say(self, line: str) -> None:
        self.said.append(line)

    def log(self, record: dict[str, Any]) -> None:
        self.logged.append(record)

    def records(self) -> list[dict[str, Any]]:
        return list(self.logged)

    def mean(self, value: float) -> float:  # one process
        return value

    def precision(self) -> contextlib.AbstractContextManager:  # fp32 on the CPU
        return contextlib.nullcontext()


def check_monitor(
    name: str,
    out_dir: Path,
    options: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    layout: str = "mag",
    steps: int = 3,
) -> str | None:
    """Registers on a fresh plugin manager (a misspelled hook fails), then drives
    on_train_start, loss_terms, on_step_end, on_eval, on_checkpoint, on_summary and on_train_end over
    ``steps`` AdamW steps of a tiny ``layout`` model: loss terms are finite scalars, metrics
    stay JSON, and the defaults do not stop a run that is only a few steps old.  Returns None,
    or why the monitor cannot be checked here (an optional package it needs is missing)."""
    registry = registry or get_registry()
    params = api.make_component("monitor", name, dict(options or {}), registry).params
    try:
        monitor = registry.get("monitor", name).build(params)
    except api.MissingPackageError as exc:
        return str(exc)
    what = f"monitor {name!r}"
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(monitor, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise KitFailure(f"{what}: {exc}") from None
    model = tiny_model(layout).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = KitRun(model, Path(out_dir), optimizer=optimizer)
    pm.hook.on_train_start(run=run)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        run.step = step
        ids = torch.randint(0, VOCAB, (2, 13), generator=generator)
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        total = loss
        for terms in pm.hook.loss_terms(run=run, outputs={"logits": logits, "loss": loss}):
            for term, value in (terms or {}).items():
                if not (isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value)):
                    raise KitFailure(
                        f"{what}: loss term {term!r} must be a finite scalar tensor, got {value!r}"
                    )
                total = total + value
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        metrics: dict[str, Any] = {"step": step, "loss": float(loss)}
        pm.hook.on_step_end(run=run, metrics=metrics)
        try:
            json.dumps(metrics)
        except TypeError as exc:
            raise KitFailure(f"{what}: on_step_end left metrics that are not JSON: {exc}") from None
    batch = api.TrainingBatch.of(ids)  # the last step's, as a validation pass's batches
    pm.hook.on_eval(run=run, metrics={"val_loss": float(loss)}, batches=[batch])
    pm.hook.on_checkpoint(run=run, path=Path(out_dir))
    if run.stop_reason is not None:
        raise KitFailure(f"{what}: stopped a {steps}-step run at its defaults: {run.stop_reason}")
    summary: dict[str, Any] = {"step": steps, "final_loss": float(loss), "stopped_by": None}
    pm.hook.on_summary(run=run, summary=summary)
    try:
        json.dumps(summary)
    except TypeError as exc:
        raise KitFailure(f"{what}: on_summary left a summary that is not JSON: {exc}") from None
    pm.hook.on_train_end(run=run, summary=summary)
    return None
