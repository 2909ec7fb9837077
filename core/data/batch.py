"""One batch as the trainer and the evaluator use it: the tokens read and the targets.

A task yields either a token tensor of ``seq_len + 1`` columns (text: the model reads
``row[:, :-1]`` and predicts ``row[:, 1:]``) or a dict of ``(rows, seq_len)`` tensors with
``inputs`` and ``labels`` (a synthetic task whose answers are not the next input token,
e.g. MQAR): ``labels[:, t]`` is what the logits at ``t`` must predict, ``IGNORE`` where
nothing is asked.  Any other entries (e.g. ``distance``) travel along as ``extras``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

IGNORE = -100  # F.cross_entropy's default ignore_index


@attrs.frozen
class TrainingBatch:
    inputs: torch.Tensor
    targets: torch.Tensor
    extras: dict[str, torch.Tensor] = attrs.field(factory=dict)

    @classmethod
    def of(cls, batch: Any) -> TrainingBatch:
        if isinstance(batch, TrainingBatch):
            return batch
        if isinstance(batch, torch.Tensor):
            return cls(batch[:, :-1], batch[:, 1:])
        if isinstance(batch, dict) and {"inputs", "labels"} <= batch.keys():
            extras = {name: value for name, value in batch.items() if name not in ("inputs", "labels")}
            return cls(batch["inputs"], batch["labels"], extras)
        raise TypeError(
            "a task's batch must be a token tensor or a dict with 'inputs' and 'labels', "
            f"got {type(batch).__name__}"
        )

    @property
    def rows(self) -> int:
        return self.inputs.shape[0]

    @property
    def labelled(self) -> int:
        """How many targets count (not IGNORE)."""
        return int((self.targets != IGNORE).sum())

    def to(self, device: torch.device | str) -> TrainingBatch:
        return TrainingBatch(
            self.inputs.to(device),
            self.targets.to(device),
            {name: value.to(device) for name, value in self.extras.items()},
        )

    def split(self, rows: int) -> list[TrainingBatch]:
        """Micro-batches of ``rows`` rows each."""
        parts = (tensor.split(rows) for tensor in (self.inputs, self.targets, *self.extras.values()))
        return [
            TrainingBatch(inputs, targets, dict(zip(self.extras, extras, strict=True)))
            for inputs, targets, *extras in zip(*parts, strict=True)
        ]
