"""Parameter counts of a recipe's model, built on the meta device (no memory, no init time),
and which parameters take weight decay (the optimizer's groups, with the rule behind each)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import torch

from .language_model import build_model


def parameter_report(recipe: Any) -> dict[str, Any]:
    with torch.device("meta"):
        model = build_model(recipe)
    total = sum(p.numel() for p in model.parameters())  # parameters() counts a tied weight once
    groups: Counter[str] = Counter()
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        groups[parts[2] if parts[0] == "blocks" and len(parts) > 2 else parts[0]] += parameter.numel()
    lines = [f"{recipe.name or 'model'}: {total:,} parameters ({total / 1e6:.1f}M)"]
    lines += [f"  {group:<14} {count:>14,}" for group, count in sorted(groups.items(), key=lambda g: -g[1])]
    decay = weight_decay_report(model, recipe.train)
    lines += ["", *decay.pop("lines")]
    return {
        "name": recipe.name,
        "param_count": total,
        "groups": dict(groups),
        "weight_decay": decay,
        "lines": lines,
    }


def weight_decay_report(model: Any, train: Any) -> dict[str, Any]:
    """The three optimizer groups; each names its parameters, layer indices folded to ``*``."""
    from ..train.optim import parameter_table

    table = parameter_table(model)
    decay = {"decayed": train.weight_decay, "undecayed": 0.0, "gates": 0.0}
    groups: dict[str, dict[str, Any]] = {}
    for info in table:
        group = groups.setdefault(info.group, {"weight_decay": decay[info.group], "params": 0, "tensors": {}})
        group["params"] += info.numel
        pattern = re.sub(r"\.\d+\.", ".*.", info.name)
        entry = group["tensors"].setdefault(pattern, {"why": info.why, "shape": list(info.shape), "count": 0})
        entry["count"] += 1
    lines = [f"weight decay (train.weight_decay = {train.weight_decay}):"]
    for name in ("decayed", "undecayed", "gates"):
        if name not in groups:
            continue
        group = groups[name]
        extra = f", lr x{train.gate_lr_multiplier}" if name == "gates" else ""
        lines.append(f"  {name:<10} decay {group['weight_decay']}{extra}: {group['params']:,} parameters")
        for pattern, entry in group["tensors"].items():
            shape = "x".join(map(str, entry["shape"])) or "scalar"
            times = f" x{entry['count']}" if entry["count"] > 1 else ""
            lines.append(f"    {pattern:<48} {shape:<14} {entry['why']}{times}")
    return {"groups": groups, "lines": lines}
