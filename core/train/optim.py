"""AdamW with parameter groups, and the warmup + cosine learning-rate schedule.

Weight decay pulls weights toward zero; on norms, gains, biases and gates that is a
bias, not a regulariser, so they get none.  Gate parameters can also take a larger
learning rate (``train.gate_lr_multiplier``): the seeds wanted gates that move.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .spec import TrainSpec

# a parameter belongs to these tags when its name contains the pattern
TAGS = {
    "embeddings": ("embed.", "head."),
    "attention": (".attn.",),
    "ffn": (".ffn.",),
    "memory": (".memory.",),
    "global_memory": (".global_memory.",),
    "local_memory": (".local_memories.",),
    "gates": (".gates.", ".gate.", ".mixer.", "log_threshold"),
}


def parameter_tags(name: str, parameter: nn.Parameter) -> set[str]:
    """The groups a parameter belongs to (``train_only`` in a stage selects by these)."""
    dotted = f".{name}"
    tags = {tag for tag, patterns in TAGS.items() if any(p in dotted for p in patterns)}
    if parameter.ndim < 2:
        tags.add("norms_and_biases")
    return tags or {"other"}


def parameter_groups(model: nn.Module, train: TrainSpec) -> list[dict]:
    """Three AdamW groups: decayed matrices, undecayed vectors, gates (undecayed, own lr scale)."""
    decayed, undecayed, gates = [], [], []
    for name, parameter in model.named_parameters():
        tags = parameter_tags(name, parameter)
        if "gates" in tags:
            gates.append(parameter)
        elif parameter.ndim < 2:
            undecayed.append(parameter)
        else:
            decayed.append(parameter)
    groups = [
        {"name": "decayed", "params": decayed, "weight_decay": train.weight_decay, "lr_scale": 1.0},
        {"name": "undecayed", "params": undecayed, "weight_decay": 0.0, "lr_scale": 1.0},
        {"name": "gates", "params": gates, "weight_decay": 0.0, "lr_scale": train.gate_lr_multiplier},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, train: TrainSpec) -> torch.optim.AdamW:
    groups = parameter_groups(model, train)
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups, lr=train.lr, betas=tuple(train.betas), eps=train.eps, fused=fused or None
    )


def schedule_factor(step: int, train: TrainSpec) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warmup, then cosine or constant."""
    total = train.total_steps
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return 1.0
    span = max(1, total - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    floor = train.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, peak: float, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = peak * factor * group.get("lr_scale", 1.0)
    return peak * factor


def freeze_except(model: nn.Module, train_only: Iterable[str]) -> list[str]:
    """Let only parameters tagged with one of ``train_only`` train; returns the frozen names."""
    wanted = set(train_only)
    frozen = []
    for name, parameter in model.named_parameters():
        trains = not wanted or bool(parameter_tags(name, parameter) & wanted)
        parameter.requires_grad_(trains)
        if not trains:
            frozen.append(name)
    return frozen
