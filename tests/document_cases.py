"""What the packed-document tests share: tiny float64 models whose W_init is non-zero (so a
restart differs from carrying on), the per-token rules they run, and each row's documents
run apart as the oracle."""

from __future__ import annotations

import itertools

import torch

from miraslab.model.language_model import build_model
from miraslab.model.spec import ModelSpec
from miraslab.params import structure

SEP = 1
VOCAB = 40
CHUNK = 4
DELTA = {"memory": "linear", "bias": "l2", "retention": "none", "algorithm": "gd"}
GATED_DELTA = {**DELTA, "retention": {"name": "decay", "gradient_at": "decayed"}}
MOMENTUM = {**DELTA, "retention": "decay", "algorithm": "momentum"}


def tiny_model(layout: str, memory: dict, attention: dict, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    table = {
        "vocab_size": VOCAB,
        "d_model": 16,
        "n_layers": 2,
        "n_heads": 2,
        "layout": layout,
        "attention": {"window": 0, "persistent_tokens": 2, **attention},
        "memory": {"chunk_size": CHUNK, "inner_steps": "per_token", **memory},
        **extra,
    }
    model = build_model(structure(table, ModelSpec)).double().eval()
    with torch.no_grad():  # a non-zero W_init, so that a restart differs from carrying on
        for name, parameter in model.named_parameters():
            if "init" in name:
                parameter.normal_(0, 0.5)
    return model


def alone(model: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Each row's documents run apart, one call each, written back at their places."""
    out = torch.zeros(*rows.shape, VOCAB, dtype=torch.float64)
    for row in range(rows.shape[0]):
        cuts = [0, *[int(i) for i in (rows[row] == SEP).nonzero().flatten() if i > 0], rows.shape[1]]
        for start, end in itertools.pairwise(cuts):
            out[row, start:end] = model(rows[row : row + 1, start:end])[0]
    return out
