"""The whole recipe: model, data, training and monitors."""

from __future__ import annotations

import attrs

from ..limits import MAX_SEED
from ..model.spec import ModelSpec
from ..params import component_type, param
from ..train.spec import DataSpec, TrainSpec

MonitorComponent = component_type("monitor")


@attrs.frozen
class Recipe:
    """A fully resolved recipe: every component looked up, every option filled in."""

    name: str = param("", doc="shown in logs and run directories")
    description: str = param("", doc="one line about what this recipe is for")
    seed: int = param(0, ge=0, le=MAX_SEED, doc="seeds weights, data order and dropout")
    model: ModelSpec = attrs.field(factory=ModelSpec, metadata={"doc": "the model"})
    data: DataSpec = attrs.field(factory=DataSpec, metadata={"doc": "the data"})
    train: TrainSpec = attrs.field(factory=TrainSpec, metadata={"doc": "training"})
    monitors: tuple[MonitorComponent, ...] = attrs.field(
        factory=tuple, metadata={"doc": "diagnostics, kill switches and regularizers ([[monitors]])"}
    )
