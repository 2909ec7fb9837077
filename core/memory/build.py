"""Building a memory rule and its feature map from recipe components."""

from __future__ import annotations

from ..components import build_component
from ..errors import RecipeError
from ..params import Component
from .parts import FeatureMap
from .rule import MemoryRule


def build_rule(
    memory: Component,
    bias: Component,
    retention: Component,
    algorithm: Component,
    heads: int,
    d_key: int,
    d_value: int,
    channelwise_lr: bool = False,
    channelwise_window: bool = False,
) -> MemoryRule:
    """The four Miras parts for ``heads`` heads with keys of width ``d_key`` (after phi)."""
    parts = (
        build_component(memory, heads=heads, d_in=d_key, d_out=d_value),
        build_component(bias),
        build_component(retention),
        build_component(algorithm),
    )
    for part, component in zip(parts, (memory, bias, retention, algorithm), strict=True):
        part.component_name = component.name
    try:
        return MemoryRule(*parts, channelwise_lr=channelwise_lr, channelwise_window=channelwise_window)
    except ValueError as exc:
        raise RecipeError([f"model.memory: {exc}"]) from None


def build_features(features: Component, dim: int) -> FeatureMap:
    return build_component(features, dim=dim)
