"""AdamW with parameter groups, and the warmup + cosine learning-rate schedule.

Weight decay pulls weights toward zero; on norms, gains, biases and gates that is a
bias, not a regulariser, so they get none.  Which parameters decay is declared, never
guessed from a tensor's rank (a per-head LayerNorm gain of shape (H, 1, d) is a gain):

1. gates (names matching ``TAGS["gates"]``) take no decay and ``train.gate_lr_multiplier``;
2. parameters of a normalisation module (``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``,
   batch norms, or any module whose class name ends in ``Norm``) take none;
3. a parameter named ``bias`` or ending in ``_bias`` takes none;
4. a module lists parameters of its own in a ``no_weight_decay`` attribute (a tuple of
   names, as in timm): they take none;
5. everything else decays, whatever its shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs
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

_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


@attrs.frozen
class ParameterInfo:
    """One parameter's optimizer group and the rule that put it there."""

    name: str
    shape: tuple[int, ...]
    numel: int
    tags: frozenset[str]
    group: str  # decayed | undecayed | gates
    why: str  # gate | norm | bias | declared | weight


def _undecayed_reason(module: nn.Module, leaf: str) -> str | None:
    if isinstance(module, _NORMS) or type(module).__name__.endswith("Norm"):
        return "norm"
    if leaf == "bias" or leaf.endswith("_bias"):
        return "bias"
    if leaf in tuple(getattr(module, "no_weight_decay", ())):
        return "declared"
    return None


def parameter_table(model: nn.Module) -> list[ParameterInfo]:
    """Every parameter (a tied one once) with its tags, optimizer group and why."""
    modules = dict(model.named_modules())
    table = []
    for name, parameter in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        dotted = f".{name}"
        tags = {tag for tag, patterns in TAGS.items() if any(p in dotted for p in patterns)}
        reason = _undecayed_reason(modules[owner], leaf)
        if reason is not None:
            tags.add("norms_and_biases")
        if "gates" in tags:
            group, why = "gates", "gate"
        elif reason is not None:
            group, why = "undecayed", reason
        else:
            group, why = "decayed", "weight"
        info = ParameterInfo(
            name, tuple(parameter.shape), parameter.numel(), frozenset(tags or {"other"}), group, why
        )
        table.append(info)
    return table


def parameter_tags(model: nn.Module) -> dict[str, frozenset[str]]:
    """The groups each parameter belongs to (``train_only`` in a stage selects by these)."""
    return {info.name: info.tags for info in parameter_table(model)}


def parameter_groups(model: nn.Module, train: TrainSpec) -> list[dict]:
    """Three AdamW groups: decayed, undecayed (norms, biases, declared), gates (own lr scale)."""
    members: dict[str, list[nn.Parameter]] = {"decayed": [], "undecayed": [], "gates": []}
    parameters = dict(model.named_parameters())
    for info in parameter_table(model):
        members[info.group].append(parameters[info.name])
    groups = [
        {
            "name": "decayed",
            "params": members["decayed"],
            "weight_decay": train.weight_decay,
            "lr_scale": 1.0,
        },
        {"name": "undecayed", "params": members["undecayed"], "weight_decay": 0.0, "lr_scale": 1.0},
        {
            "name": "gates",
            "params": members["gates"],
            "weight_decay": 0.0,
            "lr_scale": train.gate_lr_multiplier,
        },
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
    tags = parameter_tags(model)
    frozen = []
    for name, parameter in model.named_parameters():
        trains = not wanted or bool(tags[name] & wanted)
        parameter.requires_grad_(trains)
        if not trains:
            frozen.append(name)
    return frozen
