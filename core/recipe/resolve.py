"""From a recipe file (plus ``--set``) to a structured, validated :class:`Recipe`."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from ..errors import RecipeError
from ..params import ParamsError, join_path, make_converter, structure_with
from ..registry import get_registry
from .loading import SET_ORIGIN, Origins, apply_set, display_path, load_raw, origin_of
from .schema import Recipe
from .size_check import size_problems
from .toml_writer import dumps


def load_recipe(path: str | Path, sets: Iterable[str] = (), *, stored: bool = False) -> Recipe:
    """Read, merge, override, structure and validate a recipe; raise RecipeError on any problem.

    ``stored``: a run's own ``recipe.toml``, whose schedule was accepted when the run began
    (it spells out every default, so a warmup it inherited would look chosen).
    """
    data, origins = load_raw(path, sets)
    return recipe_from_dict(data, origins, default_origin=display_path(path), check_schedule=not stored)


def recipe_from_dict(
    data: dict[str, Any],
    origins: Origins | None = None,
    default_origin: str = "<recipe>",
    check_schedule: bool = True,
) -> Recipe:
    origins = origins or {}
    converter = make_converter(get_registry())
    try:
        recipe = structure_with(converter, data, Recipe)
    except ParamsError as exc:
        raise RecipeError(
            [f"{origin_of(p, origins, default_origin)}: {join_path(p)}: {m}" for p, m in exc.problems]
        ) from None
    # sizes first: the memory checks below build modules, which an absurd size must not reach
    sizes = size_problems(recipe.model)
    if sizes:
        raise RecipeError(
            [f"{origin_of(tuple(p.split(':')[0].split('.')), origins, default_origin)}: {p}" for p in sizes]
        )
    recipe = _seed_path_resolved(recipe, origins, default_origin)
    problems = _schedule_problems(recipe, origins, default_origin) if check_schedule else []
    problems += list(_stage_problems(recipe, data, converter, default_origin, origins))
    problems += [
        f"{_memory_origin(origins, default_origin)}: model.memory: {p}" for p in _memory_problems(recipe)
    ]
    if not problems and (carried := carried_documents_problem(recipe)) is not None:
        problems.append(f"{origin_of(('data', 'carry_state'), origins, default_origin)}: {carried}")
    if problems:
        raise RecipeError(problems)
    return recipe


def carried_documents_problem(recipe: Recipe) -> str | None:
    """Why ``data.carry_state`` and ``data.reset_at_documents`` cannot run together for this
    recipe's model, as one sentence naming both keys; None when they can (or are not both on).
    A carried row restarts its state at each document start inside it, which only a model that
    runs packed documents does (``LanguageModel.documents_reason``)."""
    if not (recipe.data.carry_state and recipe.data.reset_at_documents):
        return None
    import torch

    from ..model.language_model import LanguageModel

    with torch.device("meta"):  # the parts only: nothing allocated
        reason = LanguageModel(recipe.model).documents_reason()
    if reason is None:
        return None
    return (
        "data.carry_state and data.reset_at_documents: a carried row restarts its state at each document "
        f"start inside it, which this model cannot do in a packed row ({reason}); set one of them to false"
    )


def _schedule_problems(recipe: Recipe, origins: Origins, default_origin: str) -> list[str]:
    """A warmup longer than the run never reaches its learning rate.

    Refused where a file chose the run's length; a run shortened by ``--set train.steps=2``
    (a smoke test, an ablation cell) is the shortening's business, whatever its warmup.
    """
    train = recipe.train
    warmup_at = ("train", "warmup_steps")
    steps_at = ("train", "stages") if train.stages else ("train", "steps")
    if warmup_at not in origins or train.warmup_steps <= train.total_steps:
        return []
    warmup_origin = origins[warmup_at]
    if origin_of(steps_at, origins, default_origin) == SET_ORIGIN:
        return []
    return [
        f"{warmup_origin}: train.warmup_steps: {train.warmup_steps:,} warmup steps in a run of "
        f"{train.total_steps:,} steps never reach train.lr; make warmup_steps at most {train.total_steps:,}"
    ]


def _seed_path_resolved(recipe: Recipe, origins: Origins, default_origin: str) -> Recipe:
    """``model.init.from`` made absolute: relative to the recipe file that wrote it (as ``extends``
    is), or to the working directory when ``--set`` gave it; the run directory's copy of the
    recipe then names the same checkpoint from anywhere."""
    init = recipe.model.init
    if init is None or Path(init.from_).is_absolute():
        return recipe
    origin = Path(origin_of(("model", "init", "from"), origins, default_origin))
    base = origin.parent if origin.suffix == ".toml" and origin.is_file() else Path()
    absolute = os.path.normpath(os.path.abspath(base / init.from_))
    return attrs.evolve(recipe, model=attrs.evolve(recipe.model, init=attrs.evolve(init, from_=absolute)))


# the train keys a stage's recipe is read for (the optimizer and its step); the others are the run's
STAGE_TRAIN_KEYS = frozenset(
    f"train.{key}" for key in ("lr", "weight_decay", "gate_lr_multiplier", "betas", "eps", "grad_clip")
)


def _memory_problems(recipe: Recipe) -> list[str]:
    """Memory-axis combinations the engine refuses, when the layout has a memory."""
    from ..memory.rule.build import combination_problems  # the memory engine, only for recipes that use it

    model = recipe.model
    if not getattr(get_registry().get("layout", model.layout.name).factory, "uses_memory", False):
        return []
    tnt = getattr(model, "tnt", None)
    chunks = (tnt.global_chunk, *tnt.local_chunks) if tnt is not None else ()
    return combination_problems(model.memory, model.d_model, model.n_heads, chunks)


def _memory_origin(origins: Origins, default_origin: str) -> str:
    """The files (and --set) that wrote the keys of [model.memory], in order: a combination spans them."""
    sources = [origin for path, origin in origins.items() if path[:2] == ("model", "memory")]
    return " + ".join(dict.fromkeys(sources)) or default_origin


def _stage_problems(
    recipe: Recipe,
    data: dict[str, Any],
    converter: Any,
    default_origin: str,
    origins: Origins,
) -> Iterable[str]:
    """Each stage's overrides must name real keys and leave a valid recipe."""
    for index, stage in enumerate(recipe.train.stages):
        where = ("train", "stages", f"[{index}]", "overrides")
        shown = origin_of(where, origins, default_origin)
        staged = copy.deepcopy(data)
        for key, value in stage.overrides.items():
            if not (key.startswith("model.") or key in STAGE_TRAIN_KEYS):
                allowed = ", ".join(sorted(STAGE_TRAIN_KEYS))
                yield (
                    f"{shown}: {join_path(where)}: {key}: a stage can override model.* keys and {allowed}; "
                    "the data and the rest of train stay the run's"
                )
                continue
            try:
                apply_set(
                    staged, tuple(key.split(".")), value, shown, {}, shown=f"{shown}: {join_path(where)}"
                )
            except RecipeError as exc:
                yield from exc.problems
        try:
            staged_recipe = structure_with(converter, staged, Recipe)
        except ParamsError as exc:
            for path, message in exc.problems:
                yield f"{shown}: {join_path(where)}: {join_path(path)}: {message}"
            continue
        if sizes := size_problems(staged_recipe.model):
            yield from (f"{shown}: {join_path(where)}: {problem}" for problem in sizes)
            continue
        memory = _memory_problems(staged_recipe)
        for problem in memory:
            yield f"{shown}: {join_path(where)}: model.memory: {problem}"
        reshapes = not memory and any(key.startswith("model.") for key in stage.overrides)
        if reshapes and (carried := carried_documents_problem(staged_recipe)) is not None:
            yield f"{shown}: {join_path(where)}: {carried}"
        if reshapes and (changed := _changed_shape(recipe, staged_recipe)):
            yield (
                f"{shown}: {join_path(where)}: a stage may not change parameter shapes, and these "
                f"overrides change {changed}; weights carry from stage to stage"
            )


def _changed_shape(recipe: Recipe, staged: Recipe) -> str:
    """The first parameter whose shape (or presence) differs between two recipes' models."""
    import torch

    from ..model.language_model import LanguageModel

    with torch.device("meta"):  # shapes only, nothing allocated
        before = {n: tuple(t.shape) for n, t in LanguageModel(recipe.model).state_dict().items()}
        after = {n: tuple(t.shape) for n, t in LanguageModel(staged.model).state_dict().items()}
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            return f"{name} from {list(before.get(name, ())) or 'absent'} to {list(after.get(name, ())) or 'absent'}"
    return ""


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (it loads back to an equal Recipe)."""
    return make_converter(get_registry()).unstructure(recipe)


def recipe_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML: what every run directory keeps as ``recipe.toml``."""
    return dumps(recipe_to_dict(recipe))


def with_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """The recipe with dotted-key overrides applied (a TNT stage switch)."""
    data = recipe_to_dict(recipe)
    for key, value in overrides.items():
        apply_set(data, tuple(key.split(".")), value, "stage", {})
    return recipe_from_dict(data)
