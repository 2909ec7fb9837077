"""TNT stages: which stage a step is in, and the recipe each stage runs with."""

from __future__ import annotations

import attrs

from ..recipe.resolve import with_overrides
from ..recipe.schema import Recipe
from .spec import StageSpec


@attrs.frozen
class Stage:
    index: int
    name: str
    start: int  # first step (0-based) of the stage
    end: int  # one past its last step
    spec: StageSpec
    recipe: Recipe  # the run's recipe with this stage's overrides applied


def plan_stages(recipe: Recipe) -> list[Stage]:
    """The run's stages in order; a recipe without ``[[train.stages]]`` has one."""
    specs = recipe.train.stages or (StageSpec(steps=recipe.train.steps, name="train"),)
    stages, start = [], 0
    for index, spec in enumerate(specs):
        staged = with_overrides(recipe, spec.overrides) if spec.overrides else recipe
        name = spec.name or f"stage{index + 1}"
        stages.append(Stage(index, name, start, start + spec.steps, spec, staged))
        start += spec.steps
    return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
    for stage in stages:
        if step < stage.end:
            return stage
    return stages[-1]
