"""Parameter counts of a recipe's model, built on the meta device (no memory, no init time)."""

from __future__ import annotations

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
    return {"name": recipe.name, "param_count": total, "groups": dict(groups), "lines": lines}
