"""Gate polarisation loss (the Atlas-MAG seed): push each MAG/MAC gate toward 0 or 1, so a
token commits to memory or to attention instead of hovering at 0.5,

    L_polar = lambda(t) * mean(1 - |2 g - 1|)

maximal at g = 0.5, zero at g in {0, 1}; lambda ramps up linearly over ``warmup_steps``.
The term is added to the training loss and logged as ``gate_polarization``.
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import GatePenalty


@attrs.frozen
class GatePolarizationParams:
    weight: float = miraslab.param(0.01, ge=0, doc="lambda once warmed up")
    warmup_steps: int = miraslab.param(1000, ge=0, doc="steps over which lambda ramps from 0")


class GatePolarization(GatePenalty):
    """Adds lambda(t) * mean(1 - |2g - 1|) over every memory gate to the loss."""

    term = "gate_polarization"

    def penalty(self, run, gates):
        ramp = min(1.0, (run.step + 1) / self.params.warmup_steps) if self.params.warmup_steps else 1.0
        penalty = torch.stack([(1 - (2 * g.float() - 1).abs()).mean() for g in gates]).mean()
        return self.params.weight * ramp * penalty


@miraslab.hookimpl
def register_monitors(register):
    register("gate_polarization", GatePolarization, GatePolarizationParams)
