"""Accuracy of a trained model on a task's validation batches, overall and by distance.

For a task with answers (labels -100 elsewhere, e.g. MQAR) accuracy is the share of
answers whose argmax is right; for text, next-token accuracy over every position.  Where
the batches carry each answer's key-to-query ``distance``, accuracy is also reported per
distance bucket: powers of two, [2, 4), [4, 8), ... — how far back the model can recall.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from .data.batch import IGNORE, TrainingBatch
from .memory.knockout import memory_ablation


def distance_bucket(distance: int) -> tuple[int, int]:
    """The power-of-two bucket [2^j, 2^(j+1)) holding ``distance`` (>= 1)."""
    low = 1 << (max(distance, 1).bit_length() - 1)
    return low, 2 * low


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[Any]) -> dict[str, Any]:
    """Loss (the mean over all answers) and accuracy over ``batches`` (a task's batches, or
    ``TrainingBatch``es); the same list can be evaluated again, e.g. under an ablation."""
    was_training = model.training
    model.eval()
    loss_sum, correct, asked = 0.0, 0, 0
    by_bucket: dict[tuple[int, int], list[int]] = {}
    try:
        for raw in batches:
            batch = TrainingBatch.of(raw)
            logits = model(batch.inputs).float()
            answers = batch.targets != IGNORE
            right = logits.argmax(-1) == batch.targets
            # IGNORE is cross_entropy's ignore_index: no masked copy of the logits
            loss_sum += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1), reduction="sum"
                )
            )
            correct += int(right[answers].sum())
            asked += int(answers.sum())
            distance = batch.extras.get("distance")
            if distance is not None:
                for d, hit in zip(distance[answers].tolist(), right[answers].tolist(), strict=True):
                    tally = by_bucket.setdefault(distance_bucket(d), [0, 0])
                    tally[0] += int(hit)
                    tally[1] += 1
    finally:
        model.train(was_training)
    loss = loss_sum / max(asked, 1)
    return {
        "accuracy": correct / max(asked, 1),
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        "answers": asked,
        "by_distance": [
            {"from": low, "to": high, "accuracy": hits / total, "answers": total}
            for (low, high), (hits, total) in sorted(by_bucket.items())
        ],
    }


def evaluate_by_memory(model: Any, batches: list[Any], modes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``evaluate`` under each memory ablation mode, in order, on the same batches."""
    results = {}
    for mode in modes:
        with memory_ablation(model, mode):
            results[mode] = {"memory": mode, **evaluate(model, batches)}
    return results
