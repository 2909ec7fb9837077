"""The tiny float64 language model the model-level tests share: two layers of width 32, window
4, chunk 3 (a short sequence crosses chunk and window boundaries)."""

from __future__ import annotations

import torch

from miraslab.model.language_model import build_model
from miraslab.model.spec import ModelSpec
from miraslab.params import structure


def tiny_model(layout: str | dict, tnt: dict | None = None, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    table = {
        "vocab_size": 40,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "layout": layout,
        "attention": {"window": 4, "persistent_tokens": 2},
        "memory": {"chunk_size": 3},
        **overrides,
    }
    if tnt is not None:
        table["tnt"] = tnt
    return build_model(structure(table, ModelSpec)).double()
