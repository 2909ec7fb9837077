"""docs/api.md, the reference a plugin author writes from, cannot drift from the code: every
public name of every base class a plugin builds on (methods, class attributes, dataclass and attrs
fields, the attributes its constructor sets), every trainer event and every gate of the built-ins
appears in its section; and the learning algorithm's `normalized` has one default, in code and docs.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import attrs
import pytest
import torch
from torch import nn

import miraslab
from miraslab import hookspecs
from miraslab.api import (
    AttentionalBias,
    AttentionBackend,
    Batches,
    Block,
    BlockContext,
    ChunkEnd,
    FeatureMap,
    GateDef,
    GatePenalty,
    LearningAlgorithm,
    MemoryArchitecture,
    Retention,
    RunContext,
    SeededBatches,
    SeededTask,
    StateDef,
    Task,
    Visibility,
    make_component,
)
from miraslab.testing import option_variants

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"

# the section of docs/api.md (its heading's start) -> the classes it documents
SECTIONS = {
    "Gates": [GateDef],
    "Memory architecture": [MemoryArchitecture],
    "Attentional bias": [AttentionalBias],
    "Retention": [Retention],
    "Algorithm": [LearningAlgorithm],
    "Algorithm state": [StateDef],
    "Chunk ends": [ChunkEnd],
    "Feature map": [FeatureMap],
    "Layout": [Block, BlockContext],
    "Attention": [AttentionBackend, Visibility],
    "Task": [Task, SeededTask, SeededBatches, Batches],
    "Monitor": [RunContext, GatePenalty],
}
INSTANCES = {  # the attributes a base's constructor sets are part of what a subclass uses
    MemoryArchitecture: lambda: MemoryArchitecture(1, 2, 3),
    FeatureMap: lambda: FeatureMap(4),
    Visibility: lambda: Visibility(torch.arange(3), torch.arange(3), 0),
}


def section(heading: str) -> str:
    parts = re.split(r"^## ", PAGE.read_text(), flags=re.M)
    found = [part for part in parts if part.splitlines()[0].split(":")[0] == heading]
    assert len(found) == 1, f"docs/api.md has no single section '## {heading}...'"
    return found[0]


def public_names(cls: type) -> set[str]:
    """What a plugin sees on ``cls``: names miraslab's classes in its MRO define, its fields,
    and what its constructor sets (``INSTANCES``), without nn.Module's own."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("miraslab"):
            names |= set(vars(klass)) | set(getattr(klass, "__annotations__", {}))
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    if attrs.has(cls):
        names |= {f.name for f in attrs.fields(cls)}
    if cls in INSTANCES:
        instance = INSTANCES[cls]()
        names |= set(vars(instance)) - set(vars(nn.Module()))
        if isinstance(instance, nn.Module):
            names |= {name for name, _ in instance.named_children()}
    return {n for n in names if not n.startswith("_")}


def documented(text: str, name: str) -> bool:
    return re.search(rf"`{re.escape(name)}[`(]", text) is not None


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_every_public_name_of_the_base_classes_is_in_its_section(heading):
    text = section(heading)
    missing = {
        cls.__name__: sorted(n for n in public_names(cls) if not documented(text, n))
        for cls in SECTIONS[heading]
    }
    assert not any(missing.values()), f"docs/api.md '## {heading}' lacks {missing}"


def test_the_introspection_sees_what_the_issue_named():
    methods_and_flags = {"gates", "lr", "log_eta", "chunk_end", "momentum", "momentum_gate", "nonlinear"}
    assert methods_and_flags | {"normalized"} <= public_names(LearningAlgorithm)
    chunk_end = {"start", "weights", "momentum", "log_decay", "sums", "extra", "decayed_update"}
    assert chunk_end | {"aux_log_decay"} <= public_names(ChunkEnd)
    assert {"gradient_slope", "gradient_offset"} <= public_names(AttentionalBias)
    assert {"heads", "d_in", "d_out", "shapes", "biases", "init"} <= public_names(MemoryArchitecture)
    assert not documented("`normalizedx`", "normalized")  # a longer name does not count


def test_every_trainer_event_is_in_the_monitor_section():
    text = section("Monitor")
    events = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "miraslab_spec") and not name.startswith("register_")
    ]
    assert "on_train_end" in events
    assert [e for e in events if not documented(text, e)] == []


def test_every_gate_a_builtin_defines_is_in_the_gates_table():
    text, registry = section("Gates"), miraslab.get_registry()
    gates = set()
    for kind in ("bias", "retention", "algorithm"):
        for info in registry.components(kind):
            for variant in option_variants(kind, info.name, 8, registry):
                component = info.build(make_component(kind, info.name, variant, registry).params)
                gates |= {gate.name for gate in component.gates()}
    assert {"lr", "momentum", "decay", "omega", "huber_delta"} <= gates
    assert sorted(g for g in gates if not documented(text, g)) == []


def test_normalized_has_one_default_in_the_base_the_builtins_and_the_docs():
    """A plugin that never sets ``normalized`` takes the normalised step, as every built-in does by
    default and as docs/memory.md and docs/api.md say."""
    assert LearningAlgorithm.normalized is True
    registry = miraslab.get_registry()
    for info in registry.components("algorithm"):
        assert info.params().normalized is LearningAlgorithm.normalized, info.name
    row = next(line for line in section("Algorithm").splitlines() if line.startswith("| `normalized`"))
    assert "**default True**" in row
