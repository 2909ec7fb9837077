"""miraslab: test-time-memory sequence models composed from the four Miras axes.

Public API (lazy, so ``import miraslab`` stays cheap for plugin authors)::

    miraslab.hookimpl                  # mark plugin hook implementations
    miraslab.load_recipe(path, sets)   # a validated Recipe
    miraslab.build_model(recipe)       # torch.nn.Module: input_ids -> logits
    miraslab.load_run(run_dir)         # model, tokenizer and recipe of a training run
    miraslab.MemoryLayer, miraslab.memory_op   # the memory engine without recipes
    miraslab.api                       # everything a plugin imports (docs/plugins.md)
    miraslab.PLUGIN_API_VERSION        # "MAJOR.MINOR" of that API; a plugin declares the range
                                       # it supports as MIRASLAB_PLUGIN_API = ">=1.0,<2"

The names plugin authors use most (the axis base classes, ``GateDef``, ``MemoryState``,
``Block``, ``Task``, the errors) are also attributes of ``miraslab``, read from
``miraslab.api``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .hookspecs import hookimpl, hookspec
from .params import param
from .plugin_api import PLUGIN_API_VERSION

__version__ = "0.1.0"

_LAZY = {
    "load_recipe": ("miraslab.recipe.resolve", "load_recipe"),
    "Recipe": ("miraslab.recipe.schema", "Recipe"),
    "get_registry": ("miraslab.registry", "get_registry"),
    "build_component": ("miraslab.components", "build_component"),
    "build_model": ("miraslab.recipe.build", "build_model"),
    "load_run": ("miraslab.train.run_dir", "load_run"),
    "MemoryLayer": ("miraslab.memory.layer", "MemoryLayer"),
    "memory_op": ("miraslab.memory.paths.memory_op", "memory_op"),
}
# names of the public face (miraslab.api) that are worth a top-level spelling
_API = (
    "MemoryArchitecture",
    "AttentionalBias",
    "Retention",
    "LearningAlgorithm",
    "FeatureMap",
    "GateDef",
    "MemoryState",
    "NeuralMemory",
    "GateProjections",
    "Block",
    "BlockContext",
    "KVCache",
    "MemoryGate",
    "Task",
    "Batches",
    "TrainingBatch",
    "IGNORE",
    "RunContext",
    "ParamValueError",
    "RecipeError",
    "MiraslabError",
)
_LAZY.update({name: ("miraslab.api", name) for name in _API})

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl", "hookspec", "param", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'miraslab' has no attribute {name!r}")
