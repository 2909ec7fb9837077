"""The public face of miraslab: everything a plugin author imports, from one module.

Import from here (or from ``miraslab``, which re-exports the most used names lazily),
never from ``miraslab.memory.*``, ``miraslab.model.*``, ``miraslab.data.*`` and the other
internal modules: those may move between releases, these names stay.  The built-in
plugins under ``miraslab.plugins`` import only from here, ``miraslab`` and each other
(``tests/test_public_face.py`` holds them to it), so each of them is an example of what a
third-party plugin can do with this module alone.
"""

from __future__ import annotations

from .data.batch import IGNORE, TrainingBatch
from .data.cache import cache_key
from .data.default_corpus import StdlibCorpus
from .data.document_order import DocumentOrder
from .data.documents import PackedDocuments
from .data.packing import PackedBatches
from .data.seeded_task import SeededBatches, SeededTask
from .data.sources import (
    BUILDERS,
    SUPPORTED,
    DocumentSource,
    FirstDocuments,
    HubDataset,
    LocalFiles,
    task_error,
)
from .data.streams import StreamedBatches
from .data.task import Batches, Task, check_data_state, check_seq_len, check_split, rank_rows
from .data.tokenizer_training import cached_tokenizer, protect_special_tokens, tokenizer_cache_path
from .errors import MiraslabError, MissingPackageError, RecipeError
from .evaluation import evaluate_by_memory
from .gate_penalty import GatePenalty
from .hookspecs import Register, RunContext, hookimpl, hookspec
from .long_range import recall_carry_gain
from .memory.gate_projections import GateProjections
from .memory.knockout import memories_of
from .memory.layer import MemoryLayer
from .memory.neural_memory import NeuralMemory
from .memory.paths.memory_op import memory_op
from .memory.rule.axes import (
    AlgorithmState,
    AttentionalBias,
    ChunkEnd,
    FeatureMap,
    GateDef,
    Gates,
    LearningAlgorithm,
    Linear,
    MemoryArchitecture,
    Retention,
    StateDef,
    Weights,
    at_least_fp32,
)
from .memory.rule.build import build_rule
from .memory.rule.state import MemoryState
from .memory.spec import (
    AlgorithmComponent,
    BiasComponent,
    FeaturesComponent,
    GatesSpec,
    MemoryComponent,
    MemorySpec,
    RetentionComponent,
)
from .memory_use import memory_is_used, plot_memory_use
from .memory_use import verdict as memory_use_verdict
from .model.attention import KVCache
from .model.attention_backend import (
    AttentionBackend,
    Visibility,
    is_visible,
    keys_end_at_queries,
    reference_attention,
    visibility_mask,
)
from .model.block import Block, BlockContext, TransformerBlock
from .model.memory_gate import MemoryGate, whole
from .model.spec import ModelSpec
from .observation import (
    GateObservation,
    MemoryObservation,
    gate_observations,
    memory_observations,
    observe,
    recorded_gates,
    stop_observing,
)
from .params import ParamValueError, component_field, make_component, param, structure
from .plugin_api import PLUGIN_API_VERSION
from .recipe.resolve import recipe_to_dict, recipe_toml
from .registry import Registry, Source, get_registry, use_registry
from .report import Report, build_report

__all__ = [  # noqa: RUF022 -- grouped by the kind of plugin that needs them, not sorted
    # plugin hooks and parameters
    "PLUGIN_API_VERSION",
    "hookimpl",
    "hookspec",
    "Register",
    "RunContext",
    "param",
    "component_field",
    "make_component",
    "structure",
    "ParamValueError",
    "Registry",
    "Source",
    "get_registry",
    "use_registry",
    "RecipeError",
    "MiraslabError",
    "MissingPackageError",
    # what a tracking monitor sends: the resolved recipe, the report's plots
    "recipe_to_dict",
    "recipe_toml",
    "build_report",
    "Report",
    # what the memory_use monitor measures and says: the carried state's worth at an evaluation
    "memories_of",
    "evaluate_by_memory",
    "memory_is_used",
    "memory_use_verdict",
    "plot_memory_use",
    "recall_carry_gain",
    # memory axes: what a memory/bias/retention/algorithm/features plugin subclasses
    "MemoryArchitecture",
    "AttentionalBias",
    "Retention",
    "LearningAlgorithm",
    "FeatureMap",
    "ChunkEnd",
    "GateDef",
    "StateDef",
    "AlgorithmState",
    "Gates",
    "Weights",
    "Linear",
    "at_least_fp32",
    "MemoryComponent",
    "BiasComponent",
    "RetentionComponent",
    "AlgorithmComponent",
    "FeaturesComponent",
    # the memory engine, and what monitors read from it
    "MemorySpec",
    "GatesSpec",
    "MemoryLayer",
    "memory_op",
    "build_rule",
    "MemoryState",
    "NeuralMemory",
    "GateProjections",
    # layouts and attention backends
    "Block",
    "BlockContext",
    "PackedDocuments",
    "TransformerBlock",
    "KVCache",
    "MemoryGate",
    "recorded_gates",
    "observe",
    "stop_observing",
    "gate_observations",
    "memory_observations",
    "GatePenalty",
    "GateObservation",
    "MemoryObservation",
    "whole",
    "AttentionBackend",
    "Visibility",
    "is_visible",
    "keys_end_at_queries",
    "visibility_mask",
    "reference_attention",
    "ModelSpec",
    # tasks
    "Task",
    "Batches",
    "SeededTask",
    "SeededBatches",
    "check_data_state",
    "check_seq_len",
    "check_split",
    "rank_rows",
    "cache_key",
    "TrainingBatch",
    "IGNORE",
    # text tasks: document sources, their order, packing and tokenizers
    "DocumentSource",
    "FirstDocuments",
    "HubDataset",
    "LocalFiles",
    "BUILDERS",
    "SUPPORTED",
    "task_error",
    "StdlibCorpus",
    "DocumentOrder",
    "PackedBatches",
    "StreamedBatches",
    "cached_tokenizer",
    "protect_special_tokens",
    "tokenizer_cache_path",
]
