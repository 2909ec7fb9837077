"""Where a resumed run picks up: its newest checkpoint (or the one ``--resume-from`` names),
checked against the recipe it trains with now.

A checkpoint keeps the recipe it was saved with and that recipe's hash (``recipe_hash``);
``check_resumable`` compares them key by key.  Checkpoints written after the one resumed
belong to an abandoned continuation and are removed.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import MiraslabError
from ..recipe.resolve import recipe_from_dict, recipe_to_dict
from ..recipe.schema import Recipe
from ..recipe.toml_writer import dumps
from .checkpoint import Checkpoint, CheckpointError, drop_later_checkpoints, has_checkpoint, load_checkpoint
from .distributed import Distributed
from .resume_check import check_resumable


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(dumps(recipe_to_dict(recipe)).encode()).hexdigest()


def resume_point(
    run_dir: Path, resume_from: Path | None, recipe: Recipe, dist: Distributed, say: Callable[[str], None]
) -> Checkpoint | None:
    """The checkpoint to resume from, checked against ``recipe``; None if the run has none yet."""
    if resume_from is None and not has_checkpoint(run_dir):
        return None
    checkpoint = load_checkpoint(resume_from or run_dir)
    notes = check_resumable(
        checkpoint.path,
        _with_defaults(checkpoint.meta.get("recipe")),
        checkpoint.meta.get("recipe_sha256"),
        recipe_to_dict(recipe),
        recipe_hash(recipe),
    )
    for note in notes:
        say(note)
    if dist.is_main:
        dropped = drop_later_checkpoints(run_dir, checkpoint.path)
        if dropped:
            say(
                f"resuming from {checkpoint.path.name}: removed the later checkpoints of the abandoned "
                f"run, {', '.join(dropped)}"
            )
    dist.barrier()
    return checkpoint


def saved_int(checkpoint: Checkpoint, key: str) -> int:
    """An integer of the checkpoint's meta.json (``tokens``), or a CheckpointError naming it."""
    try:
        return int(checkpoint.meta[key])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(checkpoint.path, f"meta.json holds no integer {key!r}") from None


def _with_defaults(saved: Any) -> dict[str, Any] | None:
    """A checkpoint's recipe with the keys added to the schema since filled in by their defaults."""
    if not isinstance(saved, dict):
        return None
    try:
        return recipe_to_dict(recipe_from_dict(copy.deepcopy(saved)))
    except MiraslabError:  # a key since removed or renamed: compare as saved, the change is named
        return saved
