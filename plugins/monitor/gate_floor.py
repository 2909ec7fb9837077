"""Gate floor penalty: keep each MAG/MAC gate's mean above a floor, so the memory is not
bypassed (the Atlas 300M seed's gate fell from 50 % to 0.7 % over 76k steps),

    L_floor = weight * sum over gates of relu(floor - mean(g))

zero while every gate's mean is above the floor.  Added to the training loss and logged as
``gate_floor``; the kill switch's ``gate_floor`` stops a run instead.
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import GatePenalty


@attrs.frozen
class GateFloorParams:
    floor: float = miraslab.param(0.1, gt=0, lt=1, doc="gate mean below which the penalty starts")
    weight: float = miraslab.param(1.0, ge=0, doc="penalty per unit of mean below the floor")


class GateFloor(GatePenalty):
    """Adds weight * relu(floor - mean(g)) for every MAG/MAC gate to the loss."""

    term = "gate_floor"

    def penalty(self, run, gates):
        below = torch.stack([torch.relu(self.params.floor - g.float().mean()) for g in gates]).sum()
        return self.params.weight * below


@miraslab.hookimpl
def register_monitors(register):
    register("gate_floor", GateFloor, GateFloorParams)
