"""What ``miraslab eval`` and ``miraslab probe`` evaluate on: a trained run's task (rebuilt
with the command's overrides) and its validation batches, drawn once so every condition sees
the same."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.batch import TrainingBatch
from ..data.documents import documents_apart, documents_separator
from ..errors import MiraslabError


def run_task(
    run_dir: Path, loaded: Any, task: str | None = None, sets: Sequence[str] = ()
) -> tuple[Any, Any]:
    """The run's recipe with ``task`` (a task name) and ``sets`` applied, and its task built.

    ``task.x=...`` in ``sets`` is short for ``data.task.x=...``."""
    from ..components import build_component
    from ..recipe.resolve import load_recipe

    overrides = [f'data.task={{ name = "{task}" }}'] if task else []
    overrides += [f"data.{item}" if item.startswith("task.") else item for item in sets]
    recipe = (
        load_recipe(Path(run_dir) / "recipe.toml", overrides, stored=True) if overrides else loaded.recipe
    )
    built = build_component(recipe.data.task)
    check_vocabulary(built, recipe)
    return recipe, built


def check_vocabulary(task: Any, recipe: Any) -> None:
    if task.vocab_size() > recipe.model.vocab_size:
        raise MiraslabError(
            f"data.task.vocab_size: the task's {task.vocab_size()} tokens do not fit the run's "
            f"model.vocab_size ({recipe.model.vocab_size})"
        )


def validation_batches(task: Any, recipe: Any, count: int, seq_len: int | None = None) -> list[Any]:
    """The first ``count`` validation batches, drawn once so that every condition sees the same."""
    if count < 1:
        raise MiraslabError(f"--batches: expected an integer >= 1, got {count}")
    val = task.batches(
        "val", seq_len=seq_len or recipe.data.seq_len, batch_size=recipe.train.batch_size, seed=recipe.seed
    )
    separator = documents_separator(task) if recipe.data.reset_at_documents else None
    return [documents_apart(TrainingBatch.of(next(val)), separator) for _ in range(count)]
