"""``miraslab.build_model``: the model a recipe file (with --set overrides), a Recipe or a
ModelSpec describes.

It lives in the recipe layer, above the model: the model module never loads recipes, while
recipe validation builds models to count their parameters (``size_check``) — one direction only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..model import language_model
from .resolve import load_recipe


def build_model(recipe: Any, sets: Iterable[str] = ()) -> language_model.LanguageModel:
    """A model from a recipe file path (``sets`` as ``--set`` gives them), a Recipe or a ModelSpec."""
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe, sets)
    return language_model.build_model(recipe)
