"""Memory capacity: can a memory layer store N key/value pairs, and read them back?

A memory that is never used and a memory that cannot store look the same from the loss.
This probe separates them.  For each neural memory of a model it writes N pairs as a
sequence of tokens k_1..k_N with values v_1..v_N through the memory's own rule, gates and
chunking (``NeuralMemory.forward``, the training path), then reads with queries = the keys
from the state after the last write (``NeuralMemory.retrieve``: the read MAC and decoding
use, nothing written).  Per N it reports, averaged over pairs, heads and trials,

    error  = ||y_i - v_i||^2 / ||v_i||^2     (a zero read scores 1)
    cosine = cos(y_i, v_i)

beside the same read from the memory's initial state, nothing written (``initial_*``: what a
memory that cannot store still reads, e.g. a residual MLP's k + MLP(k)), and beside a linear
delta-rule memory (M <- M + (v - M k) k^T, unit keys, step 1) written with the same keys and
values (``reference_*``): a d_key x d_value matrix per head, which stores up to d_key
orthogonal pairs exactly.

Two kinds of pairs:

* ``task``: the layer's own k/v projections of held-out task data (the validation split),
  captured from a forward of the model, duplicate keys removed, with the gates the layer's
  own projections give on the inputs that produced them;
* ``random``: random unit keys and values, with every gate at its bias (the projections'
  input set to zero: the initial gates in an untrained model).

An untrained model from a recipe shows whether its rule can store pairs at its initial
gates before anyone trains it (``miraslab probe --recipe RECIPE --capacity``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from .api import NeuralMemory  # the public face: stable across the memory refactor

PAIR_KINDS = ("task", "random")
DEFAULT_TRIALS = 4
ERROR_FLOOR = 1e-4  # where the plot draws an exact read-back
KEY_DECIMALS = 4  # keys equal to this many decimals are one key (MQAR's filler runs repeat them)


@attrs.frozen
class MemoryInputs:
    """What one memory received in a forward, pooled over batch and time."""

    keys: torch.Tensor  # (P, H, d_k), before the feature map
    values: torch.Tensor  # (P, H, d_v)
    inputs: torch.Tensor  # (P, dim): the layer input its gates are projected from


def _pool(tensor: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) -> (B*T, H, d)."""
    batch, heads, time, dim = tensor.shape
    return tensor.permute(0, 2, 1, 3).reshape(batch * time, heads, dim)


@contextmanager
def _capturing(model: nn.Module) -> Iterator[dict[str, list[tuple[torch.Tensor, ...]]]]:
    seen: dict[str, list[tuple[torch.Tensor, ...]]] = {}
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, NeuralMemory):
            continue

        def keep(_module, args, kwargs, name=name):
            named = dict(zip(("q", "k", "v", "x"), args, strict=False)) | kwargs
            seen.setdefault(name, []).append(tuple(named[key].detach() for key in ("k", "v", "x")))

        handles.append(module.register_forward_pre_hook(keep, with_kwargs=True))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def capture_memory_inputs(model: nn.Module, tokens: torch.Tensor) -> dict[str, MemoryInputs]:
    """Each neural memory's keys, values and gate inputs on one forward of ``tokens``, with
    duplicate keys (equal to ``KEY_DECIMALS`` decimals) removed."""
    with torch.no_grad(), _capturing(model) as seen:
        model(tokens)
    captured = {}
    for name, calls in seen.items():
        keys = torch.cat([_pool(k) for k, _, _ in calls])
        values = torch.cat([_pool(v) for _, v, _ in calls])
        inputs = torch.cat([x.reshape(-1, x.shape[-1]) for _, _, x in calls])
        flat = torch.round(keys.reshape(keys.shape[0], -1).float(), decimals=KEY_DECIMALS)
        _, inverse = torch.unique(flat, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), keys.shape[0], dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(keys.shape[0]), reduce="amin")
        first = first.sort().values
        captured[name] = MemoryInputs(keys[first].float(), values[first].float(), inputs[first].float())
    return captured


def write_and_read(memory: NeuralMemory, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Write (k_i, v_i), i = 1..N, with the memory's own rule, gates (projected from ``x``)
    and chunking, then read every k_i from the state after the last write.

    k: (B, H, N, d_k), v: (B, H, N, d_v), x: (B, N, dim); returns (B, H, N, d_v)."""
    _, state = memory(k, k, v, x)
    return memory.retrieve(k, state)


def delta_rule_read(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The reference: a linear memory per head written by the delta rule with unit keys and
    step 1 (M_t = M_{t-1} + (v_t - M_{t-1} k_t) k_t^T), read with the same keys."""
    k = F.normalize(k.float(), dim=-1)
    v = v.float()
    memory = k.new_zeros(*k.shape[:2], v.shape[-1], k.shape[-1])
    for t in range(k.shape[2]):
        key = k[:, :, t]
        error = v[:, :, t] - (memory @ key.unsqueeze(-1)).squeeze(-1)
        memory = memory + error.unsqueeze(-1) * key.unsqueeze(-2)
    return (memory @ k.transpose(-1, -2)).transpose(-1, -2)


def read_back(y: torch.Tensor, v: torch.Tensor) -> dict[str, float]:
    """Relative retrieval error ||y - v||^2 / ||v||^2 and cosine, means over every pair."""
    y, v = y.float(), v.float()
    error = (y - v).square().sum(-1) / v.square().sum(-1).clamp_min(1e-12)
    cosine = F.cosine_similarity(y, v, dim=-1, eps=1e-12)
    return {"error": float(error.mean()), "cosine": float(cosine.mean())}


def pair_counts(d_key: int, most: int | None = None) -> list[int]:
    """1, 2, 4, ... up to 4 x d_key (or ``most``)."""
    top = most or 4 * d_key
    counts, n = [], 1
    while n <= top:
        counts.append(n)
        n *= 2
    return counts


def _draw(pool: MemoryInputs, n: int, trials: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    picks = torch.stack([torch.randperm(pool.keys.shape[0], generator=generator)[:n] for _ in range(trials)])
    k = pool.keys[picks].permute(0, 2, 1, 3)  # (trials, H, n, d_k)
    v = pool.values[picks].permute(0, 2, 1, 3)
    return k, v, pool.inputs[picks]


def _random(pool: MemoryInputs, n: int, trials: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    heads, d_key, d_value = pool.keys.shape[1], pool.keys.shape[2], pool.values.shape[2]
    k = F.normalize(torch.randn(trials, heads, n, d_key, generator=generator), dim=-1)
    v = F.normalize(torch.randn(trials, heads, n, d_value, generator=generator), dim=-1)
    return k, v, torch.zeros(trials, n, pool.inputs.shape[1])  # x = 0: every gate at its bias


def state_size(memory: NeuralMemory, pool: MemoryInputs) -> int:
    """Numbers in one head's memory state (its weights, not the optimizer's momentum)."""
    k = pool.keys[:1].unsqueeze(2)  # one token
    _, state = memory(k, k, pool.values[:1].unsqueeze(2), pool.inputs[:1].unsqueeze(1))
    return sum(w[0, 0].numel() for w in state.memory.weights.values())


def layer_capacity(
    memory: NeuralMemory,
    pool: MemoryInputs,
    counts: Sequence[int],
    *,
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    kinds: Sequence[str] = PAIR_KINDS,
) -> dict[str, Any]:
    """The read-back of one memory against N, for each kind of pairs, beside the delta rule."""
    device = next(memory.parameters()).device
    pool = MemoryInputs(pool.keys.to(device), pool.values.to(device), pool.inputs.to(device))
    result: dict[str, Any] = {
        "d_key": pool.keys.shape[2],
        "d_value": pool.values.shape[2],
        "heads": pool.keys.shape[1],
        "chunk_size": memory.chunk_size,
        "unique_task_pairs": pool.keys.shape[0],
    }
    with torch.no_grad():
        result["state_size"] = state_size(memory, pool)
        result["reference_state_size"] = result["d_key"] * result["d_value"]
        for kind in kinds:
            generator = torch.Generator().manual_seed(seed)
            rows = []
            for n in counts:
                if kind == "task" and n > pool.keys.shape[0]:
                    break
                k, v, x = (_draw if kind == "task" else _random)(pool, n, trials, generator)
                k, v, x = k.to(device), v.to(device), x.to(device)
                own = read_back(write_and_read(memory, k, v, x), v)
                unwritten = read_back(memory.retrieve(k, None), v)  # the initial state's read
                reference = read_back(delta_rule_read(k, v), v)
                rows.append(
                    {
                        "n": n,
                        **own,
                        "initial_error": unwritten["error"],
                        "initial_cosine": unwritten["cosine"],
                        "reference_error": reference["error"],
                        "reference_cosine": reference["cosine"],
                    }
                )
            result[kind] = rows
    return result


def probe_capacity(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    most: int | None = None,
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    kinds: Sequence[str] = PAIR_KINDS,
) -> dict[str, Any]:
    """Every neural memory of ``model``: its read-back of N pairs, N = 1, 2, 4, ... up to
    4 x its key width (or ``most``), from the memory inputs of one forward of ``tokens``."""
    model.eval()
    pools = capture_memory_inputs(model, tokens)
    memories = dict(model.named_modules())
    layers = []
    for name, pool in pools.items():
        counts = pair_counts(pool.keys.shape[2], most)
        found = layer_capacity(memories[name], pool, counts, trials=trials, seed=seed, kinds=kinds)
        layers.append({"layer": name, **found})
    return {
        "trials": trials,
        "pairs": {
            "task": "the layer's own k/v of validation data (duplicate keys removed), gates from those inputs",
            "random": "random unit keys and values, every gate at its bias (its input zero)",
        },
        "reference": "a linear delta-rule memory (d_key x d_value per head, unit keys, step 1) on the same pairs",
        "layers": layers,
    }


def at_count(layer: dict[str, Any], kind: str, n: int) -> dict[str, Any] | None:
    """The row for ``n`` pairs of ``kind``, or None when the probe did not reach it."""
    return next((row for row in layer.get(kind, []) if row["n"] == n), None)


def format_capacity(result: dict[str, Any], title: str) -> list[str]:
    lines = [
        f"{title}: read-back of N key/value pairs written with each memory's own rule, gates and chunking "
        f"({result['trials']} trials), beside a linear delta rule on the same pairs"
    ]
    for layer in result["layers"]:
        lines.append(
            f"  {layer['layer']}: {layer['heads']} heads, keys {layer['d_key']}, values {layer['d_value']}, "
            f"chunk {layer['chunk_size']}, state {layer['state_size']:,} numbers per head "
            f"(delta rule {layer['reference_state_size']:,})"
        )
        for kind in PAIR_KINDS:
            if kind not in layer:
                continue
            lines.append(
                f"    {kind + ' pairs':<13} {'N':>5} {'cosine':>8} {'error':>9} {'unwritten cos':>14} "
                f"{'delta cos':>10} {'delta err':>10}"
            )
            for row in layer[kind]:
                lines.append(
                    f"    {'':<13} {row['n']:>5} {row['cosine']:8.3f} {row['error']:9.3f} "
                    f"{row['initial_cosine']:14.3f} "
                    f"{row['reference_cosine']:10.3f} {row['reference_error']:10.3f}"
                )
    return lines


def plot_capacity(result: dict[str, Any], path: Path, title: str) -> Path:
    """Cosine and error against N per layer (solid), the delta rule (dashed) and, for the
    cosine, the initial state's read (dotted), one column per kind of pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [kind for kind in PAIR_KINDS if any(kind in layer for layer in result["layers"])]
    figure, axes = plt.subplots(2, len(kinds), figsize=(5.5 * len(kinds), 7), squeeze=False, sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, kind in enumerate(kinds):
        for index, layer in enumerate(result["layers"]):
            rows = layer.get(kind, [])
            if not rows:
                continue
            n = [row["n"] for row in rows]
            colour = colours[index % len(colours)]
            for axis, key in ((axes[0][column], "cosine"), (axes[1][column], "error")):
                floor = ERROR_FLOOR if key == "error" else -1.0  # log axis: an exact read drawn at the floor
                own = [max(row[key], floor) for row in rows]
                reference = [max(row[f"reference_{key}"], floor) for row in rows]
                axis.plot(n, own, "o-", color=colour, label=layer["layer"])
                axis.plot(n, reference, "--", color=colour, alpha=0.6)
                if key == "cosine":
                    axis.plot(n, [row["initial_cosine"] for row in rows], ":", color=colour, alpha=0.6)
        axes[0][column].set_title(f"{kind} pairs")
        axes[0][column].set_ylabel("cosine(read, value)")
        axes[1][column].set_ylabel("||read - value||² / ||value||²")
        axes[1][column].axhline(1.0, color="grey", lw=0.8, ls=":")
        axes[1][column].set_xlabel("pairs written N")
        axes[1][column].set_yscale("log")
        for row in axes:
            row[column].set_xscale("log", base=2)
            row[column].grid(alpha=0.3)
    axes[0][0].plot([], [], "k--", alpha=0.6, label="delta rule (same keys, values)")
    axes[0][0].plot([], [], "k:", alpha=0.6, label="nothing written (initial state)")
    axes[1][0].plot([], [], ":", color="grey", label="a zero read")
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
