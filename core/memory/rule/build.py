"""Building a memory rule and its feature map from recipe components."""

from __future__ import annotations

from collections.abc import Iterable

from ...components import build_component
from ...errors import RecipeError
from ...params import Component
from ..paths.chunked_per_token import per_token_problem
from ..spec import MemorySpec
from .axes import AttentionalBias, FeatureMap, LearningAlgorithm, MemoryArchitecture, Retention, check_parts
from .memory_rule import MemoryRule


def build_rule(
    memory: Component,
    bias: Component,
    retention: Component,
    algorithm: Component,
    heads: int,
    d_key: int,
    d_value: int,
    channelwise: Iterable[str] = (),
) -> MemoryRule:
    """The four Miras parts for ``heads`` heads with keys of width ``d_key`` (after phi);
    ``channelwise`` names the gates with one value per value channel (``MemoryRule``)."""
    parts = _parts(memory, bias, retention, algorithm, heads, d_key, d_value)
    try:
        return MemoryRule(*parts, channelwise=channelwise)
    except ValueError as exc:
        raise RecipeError([f"model.memory: {exc}"]) from None


def combination_problems(
    spec: MemorySpec, d_model: int, n_heads: int, chunk_sizes: Iterable[int] = ()
) -> list[str]:
    """What ``MemoryRule`` would refuse in this ``[model.memory]``, found without building a model.

    ``chunk_sizes``: the chunk sizes the memories run at, when not ``spec.chunk_size`` alone
    (TNT's global and local chunks)."""
    heads = spec.heads or n_heads
    head_dim = spec.head_dim or d_model // heads
    if head_dim == 0:  # the model's own checks say so
        return []
    d_key = build_component(spec.features, dim=head_dim).out_dim
    parts = _parts(spec.memory, spec.bias, spec.retention, spec.algorithm, heads, d_key, head_dim)
    problems = check_parts(*parts, spec.gates.channelwise())
    chunk = max([spec.chunk_size, *chunk_sizes])
    if spec.inner_steps == "per_token" and chunk > 1 and (reason := per_token_problem(*parts)) is not None:
        problems.append(
            f"inner_steps = 'per_token' has no exact chunk-parallel form at chunk_size {chunk}: {reason} "
            "(use chunk_size = 1 or inner_steps = 'mini_batch')"
        )
    return problems


def _parts(
    memory: Component,
    bias: Component,
    retention: Component,
    algorithm: Component,
    heads: int,
    d_key: int,
    d_value: int,
) -> tuple[MemoryArchitecture, AttentionalBias, Retention, LearningAlgorithm]:
    parts = (
        build_component(memory, heads=heads, d_in=d_key, d_out=d_value),
        build_component(bias),
        build_component(retention),
        build_component(algorithm),
    )
    for part, component in zip(parts, (memory, bias, retention, algorithm), strict=True):
        part.component_name = component.name
    return parts


def build_features(features: Component, dim: int) -> FeatureMap:
    return build_component(features, dim=dim)
