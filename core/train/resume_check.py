"""A resume continues the run it was saved from: the recipe must be the one it trained with.

The checkpoint keeps the resolved recipe (``meta["recipe"]``) beside its hash. On resume the
run's recipe is compared with it key by key: a changed key that shapes the model or the
optimisation would silently make another experiment (or fail on a tensor shape), so it is
refused in one line naming the keys. ``SAFE_TO_CHANGE`` are the keys that only say how the
run is watched and where it runs; docs/training.md lists them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MiraslabError

SAFE_TO_CHANGE = frozenset(
    {
        "name",
        "description",
        "train.log_every",
        "train.eval_every",
        "train.eval_batches",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.compile",
        "train.activation_checkpointing",
        "train.device",
        "train.distributed",
        "train.memory_use",
        "train.memory_use_min_share",
        "train.memory_use_patience",
        "train.memory_use_action",
        # a seed checkpoint only gives a new run its first weights; a resume loads its own
        "model.init.from",
        "model.init.strict",
        "model.init.memory_from_mlp",
    }
)


class RecipeChangedError(MiraslabError):
    """The run's recipe is not the one its checkpoint was trained with."""


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two recipe dicts (lists compared whole)."""
    before, after = _flatten(saved), _flatten(current)
    return sorted(
        key for key in before.keys() | after.keys() if before.get(key, _GONE) != after.get(key, _GONE)
    )


def check_resumable(
    checkpoint: Path,
    saved: dict[str, Any] | None,
    saved_hash: str | None,
    current: dict[str, Any],
    current_hash: str,
) -> list[str]:
    """Raise if the recipe changed in a key that matters; return notes to show (safe changes).

    ``saved`` should have the current schema's defaults filled in, so a key miraslab added
    since the checkpoint does not count as a change.
    """
    if saved is None:  # saved before the recipe was stored: only its hash, which cannot name keys
        if saved_hash is None or saved_hash == current_hash:
            return []
        return [
            f"warning: {checkpoint}: the recipe's sha256 differs from the one this checkpoint was saved "
            "with (a key changed, or a miraslab update added one); it predates recorded recipes, so "
            "the keys cannot be named"
        ]
    changed = changed_keys(saved, current)
    refused = [key for key in changed if key not in SAFE_TO_CHANGE]
    if refused:
        shown = ", ".join(f"{key} ({_show(saved, key)} -> {_show(current, key)})" for key in refused[:8])
        more = f" and {len(refused) - 8} more" if len(refused) > 8 else ""
        raise RecipeChangedError(
            f"{checkpoint}: the recipe changed since this checkpoint was saved: {shown}{more}; a resume "
            f"continues the same run, so restore those keys, or start a new run {_NEW_RUN}"
        )
    return [f"resuming with {', '.join(changed)} changed (safe to change on resume)"] if changed else []


_NEW_RUN = "with `miraslab train RECIPE --out NEW_DIR --init-from CHECKPOINT` (its weights, a fresh schedule)"
_GONE = object()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: _plain(tree)}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.update(_flatten(value, path) if isinstance(value, dict) and value else {path: value})
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists: a recipe read back from a checkpoint and one from TOML compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _show(tree: dict[str, Any], key: str) -> str:
    value = _flatten(tree).get(key, _GONE)
    return "absent" if value is _GONE else repr(value)


def check_model_tensors(checkpoint: Path, expected: dict[str, Any], found: dict[str, Any]) -> None:
    """The checkpoint holds exactly the model's tensors, each of the model's shape (a strict load).

    ``expected`` maps names to tensors of the model being loaded into; a missing tensor would
    otherwise train on from its fresh initialisation, and a shape change is a raw traceback.
    """
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} of the model's tensors ({', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"holds {len(unexpected)} tensors the model has not ({', '.join(unexpected[:4])})")
    for name in sorted(expected.keys() & found.keys()):
        if tuple(expected[name].shape) != tuple(found[name].shape):
            problems.append(
                f"holds {name} of shape {list(found[name].shape)}, the model's is {list(expected[name].shape)}"
            )
            break
    if problems:
        raise RecipeChangedError(
            f"{checkpoint}: {'; '.join(problems)}: it was not saved from this recipe's model; "
            "load it with the recipe it was trained with"
        )
