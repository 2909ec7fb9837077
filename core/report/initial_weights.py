"""The learned W_init of every memory across a run's checkpoints: what the 58M seed tracked.

For each memory tensor that starts the state (``*.rule.arch.init.<name>``, shaped (heads,
rows, columns)), at each checkpoint: its Frobenius norm; its effective rank, exp of the
entropy of its normalised singular values p_i = σ_i / Σσ (Roy & Vetterli 2007), averaged over
heads; its top-1 singular-value share σ_1 / Σσ, averaged over heads; and its relative change
‖W_t − W_prev‖ / ‖W_prev‖ from the previous checkpoint.  A W_init that never moves from its
initialisation, or whose rank collapses to 1, is a memory that starts every shard the same.

Checkpoints are verified against their manifests first (``verify_checkpoint``); one that
does not verify is skipped and named.  Only the model's safetensors are read, never pickle.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import attrs
import torch
from safetensors import SafetensorError, safe_open

from ..errors import MiraslabError
from ..train.checkpoint import CHECKPOINTS, MODEL, verify_checkpoint

INIT_MARK = ".rule.arch.init."
_STEP_DIR = re.compile(r"step-(\d+)")


@attrs.frozen
class InitStats:
    memory: str  # e.g. "L0/memory/w"
    step: int
    norm: float
    effective_rank: float | None  # None for a vector (a bias's (heads, rows, 1)), or a matrix of zeros
    top1_share: float | None
    relative_change: float | None  # None at the first checkpoint, or after an all-zero W_init


@attrs.frozen
class InitHistory:
    stats: list[InitStats]
    skipped: list[str]  # checkpoints that did not verify, with why

    def memories(self) -> list[str]:
        return list(dict.fromkeys(s.memory for s in self.stats))


def memory_label(key: str) -> str:
    """``blocks.0.memory.memory.rule.arch.init.w`` -> ``L0/memory/w`` (memory_stats' naming)."""
    owner, tensor = key.split(INIT_MARK, 1)
    parts = owner.split(".")
    if parts[0] == "blocks" and len(parts) > 1:
        tag = ".".join(parts[3:]) or parts[-1]
        return f"L{parts[1]}/{tag}/{tensor}"
    return f"{owner}/{tensor}"


def spectrum_stats(weight: torch.Tensor) -> tuple[float | None, float | None]:
    """(effective rank, top-1 share) averaged over leading (head) dimensions; none for a
    vector, a map's bias (heads, rows, 1) included: its rank 1 is no collapse."""
    if weight.ndim < 2 or weight.shape[-1] == 1:
        return None, None
    singular = torch.linalg.svdvals(weight.double().reshape(-1, *weight.shape[-2:]))
    total = singular.sum(-1)
    if not bool((total > 0).all()):
        return None, None
    p = singular / total[:, None]
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    return float(entropy.exp().mean()), float((singular[:, 0] / total).mean())


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m[1]), d) for d in root.iterdir() if (m := _STEP_DIR.fullmatch(d.name)) and d.is_dir()]
    return sorted(found)


def read_initial_weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / MODEL), framework="pt", device="cpu") as file:
        return {key: file.get_tensor(key) for key in file.keys() if INIT_MARK in key}  # noqa: SIM118


def init_history(run_dir: Path) -> InitHistory:
    stats, skipped = [], []
    previous: dict[str, torch.Tensor] = {}
    for step, path in checkpoint_dirs(run_dir):
        try:
            verify_checkpoint(path)
            weights = read_initial_weights(path)
        except (MiraslabError, OSError, SafetensorError) as error:
            skipped.append(f"{path.name}: {(str(error).splitlines() or [type(error).__name__])[0]}")
            continue
        for key, weight in weights.items():
            weight = weight.double()
            rank, top1 = spectrum_stats(weight)
            change = None
            if key in previous and previous[key].shape == weight.shape:
                before = float(previous[key].norm())
                change = float((weight - previous[key]).norm()) / before if before > 0 else None
            norm = float(weight.norm())
            stats.append(InitStats(memory_label(key), step, norm, rank, top1, change))
            previous[key] = weight
    return InitHistory([s for s in stats if math.isfinite(s.norm)], skipped)
