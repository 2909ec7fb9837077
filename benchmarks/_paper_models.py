"""A paper or baseline recipe's architecture as ``--set`` lines, to lay over another recipe.

The layout, the attention's persistent tokens and the memory's axes come from the model's
recipe; its size (width, depth, heads, vocabulary, chunk and memory heads) stays the target
recipe's, so every model runs at one size on one task.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from miraslab.recipe.loading import load_raw
from miraslab.recipe.toml_writer import value_to_toml

SIZE_KEYS = {"vocab_size", "d_model", "n_layers", "n_heads", "d_ff"}
MEMORY_SIZE_KEYS = {"chunk_size", "heads", "head_dim"}


def _toml(value: Any) -> str:
    """A --set value: a bare word stays bare (the loader reads it as a string)."""
    if isinstance(value, str) and value.replace("_", "").replace("-", "").isalnum():
        return value
    return value_to_toml(value)


def model_sets(recipe: Path, keep_chunk: bool = True, segment: int = 0) -> list[str]:
    """The --set lines that turn a recipe's model into ``recipe``'s architecture (its chunk size
    too when ``keep_chunk`` is false).  ``segment``: a layout's segment (MAC's attention span, a
    size like the chunk's) set to this instead, e.g. the base recipe's attention window, so
    that its attention reaches no farther than the other layouts'."""
    data, _ = load_raw(recipe)
    spec = data.get("model", {})
    layout = spec["layout"]
    if segment and isinstance(layout, dict) and "segment" in layout:
        layout = {**layout, "segment": segment}
    sets = [f"model.layout={_toml(layout)}"]
    attention = spec.get("attention", {})
    if "persistent_tokens" in attention:
        sets.append(f"model.attention.persistent_tokens={attention['persistent_tokens']}")
    skipped = MEMORY_SIZE_KEYS if keep_chunk else MEMORY_SIZE_KEYS - {"chunk_size"}
    for key, value in spec.get("memory", {}).items():
        if key in skipped:
            continue
        if isinstance(value, dict):  # a component with options: its name first (a new name drops options)
            sets.append(f"model.memory.{key}.name={_toml(value['name'])}")
            sets += [f"model.memory.{key}.{k}={_toml(v)}" for k, v in value.items() if k != "name"]
        else:
            sets.append(f"model.memory.{key}={_toml(value)}")
    extra = set(spec) - SIZE_KEYS - {"layout", "attention", "memory"}
    if extra:
        raise SystemExit(f"{recipe}: model keys this script does not carry over: {', '.join(sorted(extra))}")
    return sets


# The inits at which a deep memory stores a pair in one step on the quickstart's task
# (docs/memory.md, "Making a deep memory store"; recipes/ablations/deep-memory-mqar.toml and
# paper-memories-mqar.toml): the retention gate starting at alpha 0.999 (at 0.98 a pair keeps
# 0.98^41 = 0.44 of itself by its nearest query, and both of an MLP's maps decay), and the
# inner step at the delta rule's scale (gd theta <= 2; momentum eta 0.5, theta <= 1, so
# theta / (1 - eta) <= 2); a Huber bias's threshold at 4 (beyond it a step is theta * delta *
# sign(e), whatever the error: at 1 with theta <= 2 writes overshoot and the outer gradient
# is 1e10 at the first step); and the memory's keys starting on the previous token
# (conv_init = "shift_keys", H3's shift: Titans-LMM at 100 % by step 250 with it, 21 % without).
# Muon keeps its own step (theta <= 0.1): Newton-Schulz makes every step theta long whatever
# the error, and at theta <= 1 the outer gradient grows chunk by chunk to 1e12 at the first
# step.  KL retention (Memora) is centred (retention.center, not Memora's: a positive simplex
# row only averages its inputs and stores no value of mixed signs) at c = 128.
# Linear memories keep theirs.
RETENTION_INIT = 0.999
HUBER_DELTA = 4.0
STEP_SCALE = {
    "gd": {"lr_max": 2.0, "lr_init": 1.0},
    "momentum": {"lr_max": 1.0, "lr_init": 0.5, "momentum": 0.5},
}
RETENTIONS_WITH_INIT = {"decay", "kl", "lq_norm"}
RETENTION_SETS = {"kl": {"center": "true", "scale": "128.0"}}


def storing_inits(recipe: Path) -> list[str]:
    """--set lines (after ``model_sets(recipe)``) that start ``recipe``'s deep memory at the
    inits that store; none for a linear memory."""
    data, _ = load_raw(recipe)
    memory = data.get("model", {}).get("memory", {})

    def name(key: str, default: str) -> str:
        value = memory.get(key, default)
        return value["name"] if isinstance(value, dict) else value

    if name("memory", "linear") == "linear":
        return []
    sets = ["model.memory.conv_init=shift_keys"]
    if name("retention", "none") in RETENTIONS_WITH_INIT:
        sets.append(f"model.memory.retention.init={RETENTION_INIT}")
    for key, value in RETENTION_SETS.get(name("retention", "none"), {}).items():
        sets.append(f"model.memory.retention.{key}={value}")
    if name("bias", "l2") == "huber":
        sets.append(f"model.memory.bias.delta={HUBER_DELTA}")
    for key, value in STEP_SCALE.get(name("algorithm", "gd"), {}).items():  # lr_max before lr_init
        sets.append(f"model.memory.algorithm.{key}={value}")
    return sets


def add_init_options(parser: argparse.ArgumentParser) -> None:
    """``--storing-inits`` (``storing_inits`` laid over each deep memory) and ``--set KEY=VALUE``
    (a recipe override after all the others), shared by the scripts that use these helpers."""
    parser.add_argument(
        "--storing-inits",
        action="store_true",
        help="start deep memories at the inits that store (retention alpha 0.999, the delta rule's step "
        "(Muon keeps its own), shift keys; KL retention centred, not Memora's)",
    )
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a recipe override, last"
    )


def inits_phrase(storing: bool, sets: list[str]) -> str:
    """What a table's title says of ``--storing-inits`` and ``--set``: ", deep memories at the
    storing inits, with KEY=VALUE ..." (empty without either)."""
    inits = ", deep memories at the storing inits" if storing else ""
    return inits + (f", with {' '.join(sets)}" if sets else "")
