"""A loss term on the MAG/MAC memory gates: the base of the gate regularisers (``gate_floor``,
``gate_polarization``) and of any a plugin adds.

Such a monitor switches observation on with the gates' graph kept (so the term's gradient
reaches the gate) and, after each training forward, turns the gate values into one scalar
added to the loss and logged under its name.  A subclass names the term and computes it::

    class GateCeiling(GatePenalty):
        term = "gate_ceiling"

        def penalty(self, run, gates):  # gates: each MAG/MAC gate's values, with their graph
            return torch.stack([torch.relu(g.float().mean() - self.params.ceiling) for g in gates]).sum()
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .hookspecs import RunContext, hookimpl
from .observation import gate_observations, observe


class GatePenalty:
    """A monitor adding ``penalty(run, gates)`` to the training loss as ``term`` (no term while
    the model has no MAG/MAC gate that carries a graph, e.g. in an evaluation forward)."""

    term: ClassVar[str]  # the loss term's name in the loss and in metrics.jsonl

    def __init__(self, params: Any):
        self.params = params

    @hookimpl
    def on_train_start(self, run: RunContext) -> None:
        observe(run.model, keep_graph=True)  # the penalty's gradient reaches the gate

    @hookimpl
    def loss_terms(self, run: RunContext, outputs: Any) -> dict[str, torch.Tensor] | None:
        live = [o.values for o in gate_observations(run.model) if o.gate is None and o.values.requires_grad]
        if not live:
            return None
        return {self.term: self.penalty(run, live)}

    def penalty(self, run: RunContext, gates: list[torch.Tensor]) -> torch.Tensor:
        """The term, a scalar tensor, from the values of every MAG/MAC gate of the last forward."""
        raise NotImplementedError(f"{type(self).__name__} must implement penalty(run, gates)")
