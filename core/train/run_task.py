"""The task a run trains on: built from the recipe, checked against the model's vocabulary,
its tokenizer kept in the run directory, its batches drawn for this process.

A resumed run reads the tokenizer it was trained with (``RUN/tokenizer.json``), not the
cache's, which may be gone; the validation split is probed before the first step, so an
empty one is found then and not at the first evaluation.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from ..components import build_component
from ..errors import RecipeError
from ..recipe.schema import Recipe
from .distributed import Distributed
from .run_dir import TOKENIZER_FILE
from .state_passing import streamed_rows


def build_task(recipe: Recipe, run_dir: Path, resume: bool) -> Any:
    """The recipe's task; a RecipeError when its vocabulary is larger than the model's."""
    component = recipe.data.task
    saved = run_dir / TOKENIZER_FILE
    params = component.params
    if resume and saved.is_file() and attrs.has(type(params)) and getattr(params, "tokenizer", None) == "":
        component = attrs.evolve(component, params=attrs.evolve(params, tokenizer=str(saved)))
    task = build_component(component)
    vocab = task.vocab_size()
    if vocab > recipe.model.vocab_size:
        raise RecipeError(
            [
                f"model.vocab_size: expected at least the task's vocabulary ({vocab}), got "
                f"{recipe.model.vocab_size}; set --set model.vocab_size={vocab}"
            ]
        )
    return task


def save_tokenizer(task: Any, run_dir: Path, *, replace: bool) -> None:
    """The task's tokenizer (if it has one) into the run directory, so the run does not depend on a cache."""
    path = run_dir / TOKENIZER_FILE
    if replace or not path.exists():
        tokenizer = task.tokenizer()
        if tokenizer is not None:
            tokenizer.save(str(path))


def task_batches(
    task: Any,
    split: str,
    recipe: Recipe,
    dist: Distributed,
    state: dict | None = None,
    streamed: bool = False,
) -> Any:
    """This process's batches of ``split``, resuming from ``state`` when given; ``streamed``:
    rows that continue from one step to the next (``data.carry_state``)."""
    rows = streamed_rows(task) if streamed else task.batches
    return rows(
        split,
        seq_len=recipe.data.seq_len,
        batch_size=recipe.train.batch_size,
        seed=recipe.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        state=state,
    )


def probe_validation(task: Any, recipe: Recipe, dist: Distributed) -> None:
    """Draw one validation batch, leaving every global generator as it was."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        next(task_batches(task, "val", recipe, dist))
    random.setstate(python_state)
    np.random.set_state(numpy_state)
