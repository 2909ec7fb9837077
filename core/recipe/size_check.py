"""Sizes checked before anything is allocated: an absurd value is one line naming its key.

Two checks, both against this machine's memory (physical RAM, or the cgroup's limit if lower):

- ``size_problems`` when a recipe is read: a lower bound on the model's weights from the
  recipe's numbers alone (no model is built), so ``d_model = 1e20`` is refused before torch
  sees it. The bound counts the embedding and a floor of ``d_model²`` per layer: any layout's
  block has at least one ``d_model × d_model`` projection.
- ``training_problems`` before the trainer builds the model: the exact parameter count (the
  model built on the meta device, which allocates nothing) times the bytes AdamW training
  holds per parameter, plus a lower bound on one micro-batch's activations (its logits and
  their gradient in fp32, and the residual stream of every layer).

Both are lower bounds: a recipe they refuse cannot run here; one they accept may still not fit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

MAX_LAYERS = 4096  # far past any published model; building more blocks takes minutes first
BYTES_PER_WEIGHT = 4  # fp32 master weights
BYTES_PER_TRAINED_PARAMETER = 16  # fp32 weight, gradient and AdamW's two moments


def machine_memory() -> int:
    """Bytes of memory this process may use: physical RAM, or the cgroup or address-space limit when lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no check
        return 1 << 62
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    try:  # an address-space cap (ulimit -v) bounds this process too
        import resource

        cap = resource.getrlimit(resource.RLIMIT_AS)[0]
        if cap != resource.RLIM_INFINITY:
            total = min(total, cap)
    except (ImportError, ValueError, OSError):
        pass
    return total


def size_problems(model: Any, memory: int | None = None) -> list[str]:
    """Problems with the model's sizes seen from the recipe alone (``model`` is a ModelSpec)."""
    if model.n_layers > MAX_LAYERS:
        return [f"model.n_layers: expected at most {MAX_LAYERS}, got {model.n_layers}"]
    memory = memory or machine_memory()
    d, layers, vocab = model.d_model, model.n_layers, model.vocab_size
    embedding = vocab * d * (1 if model.tie_embeddings else 2)
    blocks = layers * d * d
    weights = (embedding + blocks) * BYTES_PER_WEIGHT
    if weights <= memory:
        return []
    if embedding >= blocks:
        key = "model.vocab_size" if vocab > d else "model.d_model"
    else:
        key = "model.n_layers" if layers > d else "model.d_model"
    return [
        f"{key}: a model with vocab_size {vocab}, d_model {d} and {layers} layers has at least "
        f"{_count(embedding + blocks)} parameters, {_bytes(weights)} of weights, more than this machine's "
        f"{_bytes(memory)} of memory; choose a smaller {key.split('.')[-1]}"
    ]


def training_problems(recipe: Any, world_size: int = 1, memory: int | None = None) -> list[str]:
    """Whether training ``recipe`` can fit this machine: its parameters and one micro-batch."""
    import torch

    from ..model.language_model import build_model

    memory = memory or machine_memory()
    if problems := size_problems(recipe.model, memory):
        return problems
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        parameters = sum(p.numel() for p in build_model(recipe).parameters())
    state = parameters * BYTES_PER_TRAINED_PARAMETER
    if state > memory:
        return [
            f"model: {_count(parameters)} parameters need {_bytes(state)} to train (weights, gradients and "
            f"AdamW moments in fp32), more than this machine's {_bytes(memory)} of memory; make the model "
            "smaller (model.d_model, model.n_layers, model.attention.persistent_tokens, model.memory)"
        ]
    train, model = recipe.train, recipe.model
    rows = train.micro_batch_size or math.ceil(train.batch_size / world_size)
    tokens = rows * recipe.data.seq_len
    activations = tokens * (2 * model.vocab_size + model.d_model * model.n_layers) * 4
    if state + activations > memory:
        key = (
            "data.seq_len" if recipe.data.seq_len >= rows else "train.micro_batch_size (or train.batch_size)"
        )
        return [
            f"{key}: one micro-batch of {rows} x {recipe.data.seq_len} tokens needs at least "
            f"{_bytes(activations)} of activations next to {_bytes(state)} of training state, more than this "
            f"machine's {_bytes(memory)} of memory; lower {key}"
        ]
    return []


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"{n:.2e}"


def _bytes(n: int) -> str:
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 1e6 else f"{value:.2e} {unit}"
    return f"{n} bytes"
