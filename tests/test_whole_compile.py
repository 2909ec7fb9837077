"""The whole model under torch.compile: one graph for a training step, no break.

``[train] compile = true`` wraps the model in ``torch.compile`` (``train.compiled_or_eager``):
the trainer's step is the model's forward on the batch's token ids, and AOT autograd
derives the backward from that graph.  A graph break splits the step into pieces run
eagerly between them, which costs the fusion across the memory and the blocks around it,
so these tests count breaks with ``torch._dynamo.explain`` (the eager backend: tracing
only, seconds per case).
"""

from __future__ import annotations

import pytest
import torch

from miraslab.model.language_model import build_model
from miraslab.model.spec import ModelSpec
from miraslab.params import structure

pytestmark = pytest.mark.compile

MEMORIES = {
    "linear": {"memory": "linear"},
    "deep": {"memory": {"name": "mlp", "expansion": 2}},
    "gated-delta-rule": {
        "memory": "linear",
        "inner_steps": "per_token",
        "retention": {"name": "decay", "gradient_at": "decayed"},
        "algorithm": "gd",
    },
}


def tiny_model(layout: str, memory: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    table = {
        "vocab_size": 32,
        "d_model": 16,
        "n_layers": 2,
        "n_heads": 2,
        "layout": layout,
        "attention": {"window": 4},  # sliding-window attention, as the Titans hybrids use
        "memory": {**memory, "chunk_size": 4},
    }
    return build_model(structure(table, ModelSpec))


@pytest.mark.parametrize("memory", MEMORIES.values(), ids=MEMORIES.keys())
@pytest.mark.parametrize("layout", ["mal", "mag"])
def test_a_compiled_training_step_is_one_graph(layout, memory):
    """The training forward (token ids -> logits, what ``train.compile`` compiles) traces as
    one graph with no break: the memory's chunked path end to end, and the attention beside
    it.  The break this found: MAG and MAL blocks asked the attention for its decode cache
    on every call, and trimming the cache to the window is a boolean mask (a data-dependent
    shape); a block now builds the cache only when it returns its state."""
    model = tiny_model(layout, memory)
    ids = torch.randint(0, 32, (2, 12))
    explanation = torch._dynamo.explain(model)(ids)
    reasons = [reason.reason.splitlines()[0] for reason in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1
