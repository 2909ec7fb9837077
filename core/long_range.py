"""The long-range evaluation: what a model's memory adds beyond its attention window.

Every predicted token x_t of a row (a document, when documents are run apart) falls in one
class, by its bigram (x_{t−1}, x_t) — Zoology's associative-recall hit (Arora et al. 2023,
arXiv 2312.04927), split by the attention window W:

- ``beyond``: the bigram occurred earlier in the row and every earlier occurrence ends more
  than W tokens back — a copy the sliding-window attention cannot see, only the memory;
- ``near``: an earlier occurrence ends within W tokens (t − j ≤ W): attention can copy it;
- ``other``: the bigram is new.

The distance t − j counts from the earlier occurrence's second token x_j to x_t; the query
that predicts x_t sits at t − 1 and its window holds x_{t−W} .. x_{t−1}, so x_j is in reach
exactly when t − j ≤ W.  Losses are also taken by the query's position in its row, in buckets
[0, W), [W, 2W), [2W, 4W), ...

Each under four conditions on the same batches: the memory ``carried`` (as trained),
``reset`` at every chunk and its read ``zero``-ed (``miraslab.memory.knockout``), and a
``twin`` model (e.g. the sliding-window-only model at the same window).  Confidence intervals
are a percentile bootstrap over rows; gains (reset − carried, zero − carried, twin −
carried) are bootstrapped paired, the same resampled rows under both conditions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data.batch import IGNORE, TrainingBatch

# the only import of the memory-knockout module: renamed elsewhere, change this line
from .memory.knockout import memories_of, memory_ablation

CLASSES = ("beyond", "near", "other")
BEYOND, NEAR, OTHER = range(3)
GAINS = {"carry": "reset", "read": "zero", "twin": "twin"}  # gain name -> condition minus carried
RESAMPLES = 1000
LEVEL = 0.95
RECALL_CARRY_GAIN = "memory_use/recall_carry_gain"  # the trainer's key, beside memory_use/carry_gain
RECALL_HITS_SHARE = "memory_use/recall_hits_share"


def recall_classes(inputs: torch.Tensor, targets: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T) class of each target: BEYOND, NEAR or OTHER (see the module's docstring).

    The bigram of target t is (inputs[t], targets[t]); positions whose target is IGNORE are
    neither classified (they come out OTHER) nor an earlier occurrence of anything."""
    batch, length = targets.shape
    real = targets != IGNORE
    rows = torch.arange(batch, device=targets.device).unsqueeze(1).expand(batch, length)
    position = torch.arange(length, device=targets.device).expand(batch, length)
    # one integer per (row, bigram): token ids < 2^21, rows < 2^21
    key = (rows * (1 << 21) + inputs.long()) * (1 << 21) + targets.long().clamp(min=0)
    key = torch.where(real, key, -1 - (rows * length + position))  # unique: never a match
    flat_key, flat_position = key.flatten(), position.flatten()
    order = torch.sort(flat_key, stable=True).indices  # equal keys stay in position order
    sorted_key = flat_key[order]
    repeat = torch.zeros_like(sorted_key, dtype=torch.bool)
    repeat[1:] = sorted_key[1:] == sorted_key[:-1]
    # the latest earlier occurrence is the one sorted just before
    gap = torch.full_like(flat_position, -1)
    gap[1:] = flat_position[order][1:] - flat_position[order][:-1]
    distance = torch.full_like(flat_position, -1)
    distance[order[repeat]] = gap[repeat]
    distance = distance.view(batch, length)
    classes = torch.full_like(targets, OTHER, dtype=torch.long)
    classes[distance > window] = BEYOND
    classes[(distance >= 1) & (distance <= window)] = NEAR
    return classes


def position_bucket(position: torch.Tensor, window: int) -> torch.Tensor:
    """Bucket index of each position: 0 for [0, W), j >= 1 for [2^(j-1) W, 2^j W)."""
    ratio = torch.div(position, window, rounding_mode="floor")
    bucket = torch.zeros_like(ratio)
    nonzero = ratio > 0
    bucket[nonzero] = torch.floor(torch.log2(ratio[nonzero].double())).long() + 1
    return bucket


def bucket_edges(index: int, window: int) -> tuple[int, int]:
    return (0, window) if index == 0 else (window << (index - 1), window << index)


@torch.no_grad()
def token_losses(model: torch.nn.Module, batches: Sequence[Any]) -> list[torch.Tensor]:
    """Per-token cross-entropy (B, T) of each batch, 0 where the target is IGNORE."""
    was_training = model.training
    model.eval()
    try:
        losses = []
        for raw in batches:
            batch = TrainingBatch.of(raw)
            logits = model(batch.inputs).float()
            losses.append(
                F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none", ignore_index=IGNORE)
            )
        return losses
    finally:
        model.train(was_training)


def condition_losses(
    model: torch.nn.Module, batches: Sequence[Any], twin: torch.nn.Module | None = None
) -> dict[str, list[torch.Tensor]]:
    """Per-token losses under carried, reset, zero (a model with a memory) and twin (if given)."""
    modes = ("carried", "reset", "zero") if memories_of(model) else ("carried",)
    losses = {}
    for mode in modes:
        with memory_ablation(model, mode):
            losses[mode] = token_losses(model, batches)
    if twin is not None:
        losses["twin"] = token_losses(twin, batches)
    return losses


def _row_tallies(
    batches: Sequence[Any], losses: dict[str, list[torch.Tensor]], window: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Per row: token counts (R, K) and each condition's loss sums (R, K), over K columns: the
    three classes, every token, then the position buckets."""
    counts, sums = [], {name: [] for name in losses}
    buckets = 1
    tallies = []
    for index, raw in enumerate(batches):
        batch = TrainingBatch.of(raw)
        real = batch.targets != IGNORE
        classes = recall_classes(batch.inputs, batch.targets, window)
        position = torch.arange(batch.targets.shape[1], device=real.device).expand_as(batch.targets)
        bucket = position_bucket(position, window)
        buckets = max(buckets, int(bucket.max()) + 1)
        tallies.append((index, real, classes, bucket))
    for index, real, classes, bucket in tallies:
        masks = [real & (classes == c) for c in range(len(CLASSES))] + [real]
        masks += [real & (bucket == b) for b in range(buckets)]
        stacked = torch.stack(masks, dim=-1).double()  # (B, T, K)
        counts.append(stacked.sum(1))
        for name, per_batch in losses.items():
            sums[name].append((per_batch[index].double().unsqueeze(-1) * stacked).sum(1))
    return torch.cat(counts), {name: torch.cat(rows) for name, rows in sums.items()}, buckets


def _interval(values: torch.Tensor, point: float) -> dict[str, float | None]:
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0 or point != point:
        return {"mean": None, "low": None, "high": None}
    tail = (1 - LEVEL) / 2
    low, high = torch.quantile(finite, torch.tensor([tail, 1 - tail], dtype=finite.dtype)).tolist()
    return {"mean": point, "low": low, "high": high}


def summarise(
    counts: torch.Tensor,
    sums: dict[str, torch.Tensor],
    buckets: int,
    window: int,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean loss per column and condition, and the gains, each with a bootstrap interval."""
    rows = counts.shape[0]
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randint(rows, (resamples, rows), generator=generator)
    # how often each row is drawn in each resample: sums are then one matmul, (resamples, K)
    weights = torch.zeros(resamples, rows, dtype=torch.float64).scatter_add_(
        1, pick, torch.ones(resamples, rows, dtype=torch.float64)
    )
    resampled_counts = weights @ counts.double()

    def mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))

    point = {name: mean(total.sum(0), counts.sum(0)) for name, total in sums.items()}
    boot = {name: mean(weights @ total.double(), resampled_counts) for name, total in sums.items()}

    def column(k: int) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": int(counts[:, k].sum())}
        out["loss"] = {name: _interval(boot[name][:, k], float(point[name][k])) for name in sums}
        out["gain"] = {
            gain: _interval(
                boot[other][:, k] - boot["carried"][:, k], float(point[other][k] - point["carried"][k])
            )
            for gain, other in GAINS.items()
            if other in sums
        }
        return out

    classes = {name: column(k) for k, name in enumerate(CLASSES)}
    first_bucket = len(CLASSES) + 1
    by_position = []
    for b in range(buckets):
        low, high = bucket_edges(b, window)
        if counts[:, first_bucket + b].sum() > 0:
            by_position.append({"from": low, "to": high, **column(first_bucket + b)})
    return {
        "window": window,
        "rows": rows,
        "conditions": list(sums),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL, "over": "rows"},
        "all": column(len(CLASSES)),
        "classes": classes,
        "by_position": by_position,
    }


def long_range_evaluation(
    model: torch.nn.Module,
    batches: Sequence[Any],
    window: int,
    twin: torch.nn.Module | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Loss by recall class and by position under each condition, with bootstrap intervals over rows."""
    if window < 1:
        raise ValueError(f"window: expected an integer >= 1, got {window}")
    losses = condition_losses(model, batches, twin)
    counts, sums, buckets = _row_tallies(batches, losses, window)
    return summarise(counts, sums, buckets, window, resamples, seed)


def recall_carry_gain(
    model: torch.nn.Module, batches: Sequence[Any], window: int | None = None
) -> dict[str, float]:
    """The trainer's number at each evaluation of a text run: on beyond-window recall hits,
    loss(reset) − loss(carried) in nats, and the hits' share of the tokens.  ``window``
    defaults to the model's (``model_window``); empty without a memory or a window.  With no
    hit in ``batches`` the gain is 0 and the share says so.  Two forwards per batch."""
    found = (window, "") if window is not None else model_window(model)
    if found is None or not memories_of(model):
        return {}
    losses = {}
    for mode in ("carried", "reset"):
        with memory_ablation(model, mode):
            losses[mode] = token_losses(model, batches)
    counts, sums, _ = _row_tallies(batches, losses, found[0])
    hits = float(counts[:, BEYOND].sum())
    gain = float(sums["reset"][:, BEYOND].sum() - sums["carried"][:, BEYOND].sum()) / max(hits, 1.0)
    return {RECALL_CARRY_GAIN: gain, RECALL_HITS_SHARE: hits / max(float(counts[:, len(CLASSES)].sum()), 1.0)}


def model_window(model: Any) -> tuple[int, str] | None:
    """W for a model and where it comes from: its attention window when a block attends over a
    sliding window; the memory's chunk size when no block attends (lmm); None for full attention."""
    spec = getattr(model, "spec", None)
    if spec is None or not hasattr(model, "blocks"):
        return None
    attends = any(getattr(block, "uses_attention", True) for block in model.blocks)
    if attends:
        if spec.attention.window > 0:
            return spec.attention.window, "model.attention.window"
        return None
    return spec.memory.chunk_size, "model.memory.chunk_size"


def plot_long_range(result: dict[str, Any], path: Path, title: str = "") -> Path:
    """Loss against position bucket for each condition, and the recall classes as bars."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    labels = {
        "carried": "memory carried",
        "reset": "memory reset every chunk",
        "zero": "memory read zeroed",
        "twin": "twin",
    }
    conditions = result["conditions"]
    fig, (curve, bars) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    buckets = result["by_position"]
    x = list(range(len(buckets)))
    for offset, name in enumerate(conditions):
        points = [b["loss"][name] for b in buckets]
        means = [p["mean"] for p in points]
        errors = [[p["mean"] - p["low"] for p in points], [p["high"] - p["mean"] for p in points]]
        shifted = [i + 0.06 * (offset - 1.5) for i in x]
        curve.errorbar(shifted, means, yerr=errors, marker="os^D"[offset], capsize=3, label=labels[name])
    curve.set_xticks(x, [f"{b['from']}–{b['to']}" for b in buckets], rotation=30)
    curve.axvline(0.5, color="grey", linewidth=0.8, linestyle=":")  # beyond it, attention cannot see W back
    curve.set_xlabel(f"position in the row (W = {result['window']})")
    curve.set_ylabel("loss (nats)")
    curve.set_title("loss by position")
    curve.legend(fontsize=8, framealpha=0.9)
    width = 0.8 / len(conditions)
    lowest, highest = float("inf"), float("-inf")
    for offset, name in enumerate(conditions):
        points = [result["classes"][c]["loss"][name] for c in CLASSES]
        means = [p["mean"] if p["mean"] is not None else float("nan") for p in points]
        errors = [
            [(p["mean"] - p["low"]) if p["mean"] is not None else 0.0 for p in points],
            [(p["high"] - p["mean"]) if p["mean"] is not None else 0.0 for p in points],
        ]
        shifted = [i + width * (offset - (len(conditions) - 1) / 2) for i in range(len(CLASSES))]
        bars.bar(shifted, means, width, yerr=errors, capsize=3, label=labels[name])
        known = [p for p in points if p["mean"] is not None]
        lowest = min([lowest, *(p["low"] for p in known)])
        highest = max([highest, *(p["high"] for p in known)])
    if lowest < highest:  # the differences are tenths of a nat on losses of several: zoom in
        margin = 0.15 * (highest - lowest)
        bars.set_ylim(max(0.0, lowest - 3 * margin), highest + margin)
    names = {"beyond": "beyond-window\nrecall hits", "near": "near hits\n(within W)", "other": "other"}
    bars.set_xticks(
        range(len(CLASSES)), [f"{names[c]}\n{result['classes'][c]['tokens']:,} tokens" for c in CLASSES]
    )
    bars.set_ylabel("loss (nats; the axis does not start at 0)")
    bars.set_title(f"by token class ({LEVEL:.0%} bootstrap over {result['rows']} rows)")
    bars.legend(fontsize=8, loc="lower left", framealpha=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def text_rows(token_ids: Iterable[int], seq_len: int, batch_size: int) -> list[TrainingBatch]:
    """A token stream cut into rows of ``seq_len`` inputs (targets shifted by one), in batches."""
    ids = torch.tensor(list(token_ids), dtype=torch.long)
    count = (ids.numel() - 1) // seq_len
    rows = [ids[i * seq_len : (i + 1) * seq_len + 1] for i in range(count)]
    batches = []
    for start in range(0, len(rows), batch_size):
        stacked = torch.stack(rows[start : start + batch_size])
        batches.append(TrainingBatch(stacked[:, :-1], stacked[:, 1:], {}))
    return batches
