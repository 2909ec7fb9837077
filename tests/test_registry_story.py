"""One registry story: builders ask the process registry, and ``use_registry`` swaps it.

A component registered only on a private registry builds through every builder inside
the block — ``MemoryLayer``, ``build_rule``, the feature map, TNT's memories, recipes — and
is unknown again outside it.
"""

from __future__ import annotations

import attrs
import pytest
import torch

import miraslab
from miraslab.api import FeatureMap, Linear, MemoryArchitecture, MemoryLayer
from miraslab.errors import RecipeError
from miraslab.memory.rule.build import build_features, build_rule
from miraslab.memory.spec import MemorySpec
from miraslab.model.language_model import build_model
from miraslab.model.spec import ModelSpec
from miraslab.params import make_component, structure
from miraslab.registry import Registry, Source, get_registry, use_registry


@attrs.frozen
class PrivateParams:
    pass


class PrivateLinear(MemoryArchitecture):
    """M(x) = W x, under a name only the private registry knows."""

    linear_map = True

    def __init__(self, params: PrivateParams, heads: int, d_in: int, d_out: int):
        super().__init__(heads, d_in, d_out)
        self.make_init("w", d_out, d_in, std=0.0)

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        return linear("w", x)


class PrivateIdentity(FeatureMap):
    def __init__(self, params: PrivateParams, dim: int):
        super().__init__(dim)


class PrivatePlugin:
    @miraslab.hookimpl
    def register_memories(self, register):
        register("private_linear", PrivateLinear, PrivateParams)

    @miraslab.hookimpl
    def register_features(self, register):
        register("private_identity", PrivateIdentity, PrivateParams)


@pytest.fixture
def private() -> Registry:
    registry = Registry()
    registry.load_entry_points()
    registry.register_plugin(PrivatePlugin(), Source("private", "private-dist", "0.1"))
    return registry


MEMORY = {"memory": "private_linear", "features": "private_identity", "chunk_size": 2}


def test_the_private_components_are_unknown_outside_the_block(private):
    with pytest.raises(miraslab.MiraslabError, match="private_linear"):
        MemoryLayer.from_options(16, 2, memory="private_linear")
    assert "private_linear" not in get_registry().names("memory")


def test_memory_layer_build_rule_and_features_use_the_swapped_registry(private):
    with use_registry(private) as active:
        assert get_registry() is active is private
        layer = MemoryLayer.from_options(
            16, 2, memory="private_linear", features="private_identity", chunk_size=2
        )
        assert type(layer.memory.rule.arch) is PrivateLinear
        assert type(layer.memory.features) is PrivateIdentity
        y = layer(torch.randn(1, 5, 16))
        assert y.shape == (1, 5, 16)
        spec = MemorySpec.from_options(memory="private_linear", bias="l2", retention="none", algorithm="gd")
        rule = build_rule(spec, 2, 8, 8)
        assert type(rule.arch) is PrivateLinear
        assert (
            type(build_features(make_component("features", "private_identity", {}, private), 8))
            is PrivateIdentity
        )
    assert get_registry() is not private


def test_a_recipe_and_tnts_global_and_local_memories_use_the_swapped_registry(private):
    table = {
        "vocab_size": 20,
        "d_model": 16,
        "n_layers": 1,
        "n_heads": 2,
        "layout": "mal",
        "attention": {"window": 4},
        "memory": MEMORY,
        "tnt": {"global_chunk": 4, "local_chunks": [2], "shard_length": 6},
    }
    with use_registry(private):
        model = build_model(structure(table, ModelSpec))
        archs = [m for m in model.modules() if isinstance(m, MemoryArchitecture)]
        assert len(archs) == 2 and all(type(a) is PrivateLinear for a in archs), archs
        assert model(torch.randint(0, 20, (1, 7))).shape == (1, 7, 20)
    with pytest.raises((RecipeError, miraslab.MiraslabError), match="private_linear"):
        build_model(structure(table, ModelSpec))
