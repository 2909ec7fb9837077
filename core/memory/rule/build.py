"""Building a memory rule and its feature map from the memory's spec, and the spec's checks.

The checks are written once (``check_parts``, ``inner_steps_problem``) and asked here, on
parts built from the spec: :func:`build_rule` refuses what the engine cannot run, and
:func:`combination_problems` lists the same problems for a recipe before any model is built.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...components import build_component
from ...errors import RecipeError
from ...params import Component
from ..paths.chunked_per_token import inner_steps_problem
from ..paths.fla_delta import check_kernel
from ..spec import MemorySpec
from .axes import AttentionalBias, FeatureMap, LearningAlgorithm, MemoryArchitecture, Retention, check_parts
from .memory_rule import MemoryRule

Parts = tuple[MemoryArchitecture, AttentionalBias, Retention, LearningAlgorithm]


def build_rule(spec: MemorySpec, heads: int, d_key: int, d_value: int) -> MemoryRule:
    """The spec's four Miras parts for ``heads`` heads with keys of width ``d_key`` (after phi),
    its channel-wise gates from ``spec.gates``; a combination the engine refuses raises
    ``RecipeError``."""
    parts = _parts(spec, heads, d_key, d_value)
    try:
        rule = MemoryRule(*parts, channelwise=spec.gates.channelwise())
    except ValueError as exc:
        raise RecipeError([f"model.memory: {exc}"]) from None
    if (problem := inner_steps_problem(parts, spec.inner_steps, spec.chunk_size)) is not None:
        raise RecipeError([f"model.memory: {problem}"])  # TNT's memories: at their own chunk sizes
    try:
        check_kernel(spec.kernel, rule, spec.inner_steps)
    except ValueError as error:
        raise RecipeError([str(error)]) from None
    return rule


def combination_problems(
    spec: MemorySpec, d_model: int, n_heads: int, chunk_sizes: Iterable[int] = ()
) -> list[str]:
    """What the engine would refuse in this ``[model.memory]``, found without building a model.

    ``chunk_sizes``: the chunk sizes the memories run at, when not ``spec.chunk_size`` alone
    (TNT's global and local chunks)."""
    heads, head_dim = spec.shape(d_model, n_heads)
    if head_dim == 0:  # the model's own checks say so
        return []
    parts = _parts(spec, heads, build_features(spec.features, head_dim).out_dim, head_dim)
    problems = check_parts(*parts, spec.gates.channelwise())
    if (
        problem := inner_steps_problem(parts, spec.inner_steps, max([spec.chunk_size, *chunk_sizes]))
    ) is not None:
        problems.append(problem)
    return problems


def _parts(spec: MemorySpec, heads: int, d_key: int, d_value: int) -> Parts:
    components = (spec.memory, spec.bias, spec.retention, spec.algorithm)
    parts = (
        build_component(spec.memory, heads=heads, d_in=d_key, d_out=d_value),
        build_component(spec.bias),
        build_component(spec.retention),
        build_component(spec.algorithm),
    )
    for part, component in zip(parts, components, strict=True):
        part.component_name = component.name
    return parts


def build_features(features: Component, dim: int) -> FeatureMap:
    """The feature map phi (``spec.features``) on keys and queries of width ``dim``."""
    return build_component(features, dim=dim)
