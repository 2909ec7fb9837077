"""The global random generators of a training process, captured into and restored from a checkpoint.

A resumed run continues the same loss curve only if dropout masks, data shuffles and any random
draw of a plugin come out as they would have without the interruption: torch's CPU generator,
every CUDA device's generator, python ``random`` and numpy's global generator.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointError


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every global generator a training step draws from, as entries for ``tensors=`` and ``meta=``."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.copy())
    meta = {"rng.python": random.getstate(), "rng.numpy": (kind, position, has_gauss, cached_gaussian)}
    return tensors, meta


def restore_rng_state(checkpoint: Checkpoint) -> None:
    """Put back the generators ``capture_rng_state`` saved, so the resumed run draws the same numbers.

    CUDA generators are restored for the devices present both then and now.
    """
    missing = sorted({"rng.torch", "rng.numpy"} - set(checkpoint.tensors))
    missing += sorted({"rng.python", "rng.numpy"} - set(checkpoint.meta))
    if missing:
        problem = f"holds no RNG state ({', '.join(missing)} missing: saved without capture_rng_state?)"
        raise CheckpointError(checkpoint.path, problem)
    try:
        torch.set_rng_state(checkpoint.tensors["rng.torch"])
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                if (state := checkpoint.tensors.get(f"rng.cuda.{i}")) is not None:
                    torch.cuda.set_rng_state(state, i)
        random.setstate(checkpoint.meta["rng.python"])
        kind, position, has_gauss, cached_gaussian = checkpoint.meta["rng.numpy"]
        keys = checkpoint.tensors["rng.numpy"].numpy()
        np.random.set_state((kind, keys, position, has_gauss, cached_gaussian))
    except (TypeError, ValueError, RuntimeError) as error:  # a damaged or crafted state
        reason = (str(error).strip().splitlines() or [""])[0]
        problem = f"holds an RNG state that cannot be restored ({type(error).__name__}: {reason})"
        raise CheckpointError(checkpoint.path, problem) from None
