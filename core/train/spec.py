"""The recipe tables of training: ``[data]`` and ``[train]`` (with TNT ``[[train.stages]]``)."""

from __future__ import annotations

from typing import Any

import attrs

from ..limits import MAX_STEPS
from ..params import ParamValueError, component_field, component_type, param

TaskComponent = component_type("task")

# the tags of miraslab.train.optim.parameter_tags, which a stage's train_only selects from
PARAMETER_GROUPS = (
    "embeddings",
    "attention",
    "ffn",
    "memory",
    "global_memory",
    "local_memory",
    "gates",
    "norms_and_biases",
    "other",
)


@attrs.frozen
class DataSpec:
    """Where sequences come from, and their length."""

    task: TaskComponent = component_field("task", "text", "data source or synthetic task plugin")
    seq_len: int = param(512, ge=1, doc="tokens per training sequence")
    reset_at_documents: bool = param(
        False,
        doc="each document packed in a row runs as if alone: attention within it only, every memory "
        "from its initial state at its first token (the separator that opens it), in training, "
        "evaluation and generate; the rows stay packed where every model part restarts at a "
        "document's start (a per-token memory), else one row per document; needs a task that packs "
        "documents (text); with carry_state, a row's leading document continues the carried state "
        "and every later one restarts (a model that runs documents packed only)",
    )
    carry_state: bool = param(
        False,
        doc="state passing across training steps: row b of each batch continues row b of the step "
        "before in a stream read in order, and the model's state (memory, attention's KV window) is "
        "carried over, detached (truncated backpropagation through time); needs a text task; with "
        "reset_at_documents a document start inside a row resets that row's state there",
    )
    document_buckets: int = param(
        4,
        ge=1,
        doc="with reset_at_documents run apart, a training batch's documents run in up to this many forward "
        "passes (at most one per row; exactly that many in a distributed run), grouped by length so "
        "each pads only to its own longest; 1 pads all to the batch's longest",
    )


@attrs.frozen
class StageSpec:
    """One TNT stage: its length, recipe overrides, and which parameters train."""

    steps: int = param(ge=1, le=MAX_STEPS, doc="optimizer steps in this stage")
    name: str = param("", doc="shown in logs; defaults to stage1, stage2, ...")
    overrides: dict[str, Any] = attrs.field(
        factory=dict,
        metadata={"doc": 'dotted recipe keys set for this stage, e.g. {"model.memory.chunk_size" = 16}'},
    )
    train_only: tuple[str, ...] = param(
        factory=tuple,
        choices=PARAMETER_GROUPS,
        doc="parameter groups that train (e.g. ['local_memory']); empty trains all",
    )


@attrs.frozen
class TrainSpec:
    """Optimisation, schedule, precision, checkpoints and logging."""

    steps: int = param(1000, ge=1, le=MAX_STEPS, doc="optimizer steps when no stages are given")
    stages: tuple[StageSpec, ...] = attrs.field(factory=tuple, metadata={"doc": "TNT stages, run in order"})
    batch_size: int = param(8, ge=1, doc="sequences per optimizer step, over all processes")
    micro_batch_size: int = param(0, ge=0, doc="sequences per forward pass per process; 0 = no accumulation")
    lr: float = param(3e-4, gt=0, doc="peak learning rate")
    min_lr_ratio: float = param(0.1, ge=0, le=1, doc="final learning rate as a fraction of lr")
    warmup_steps: int = param(100, ge=0, doc="linear warmup steps")
    schedule: str = param("cosine", choices=("cosine", "constant"), doc="after warmup")
    weight_decay: float = param(
        0.1,
        ge=0,
        doc="AdamW weight decay (not on gates, norms, biases, or what a module lists in no_weight_decay)",
    )
    betas: tuple[float, ...] = param(factory=lambda: (0.9, 0.95), ge=0, lt=1, doc="AdamW betas")
    eps: float = param(1e-8, gt=0, doc="AdamW epsilon")
    grad_clip: float = param(1.0, ge=0, doc="clip the global gradient norm; 0 disables")
    gate_lr_multiplier: float = param(1.0, gt=0, doc="learning-rate multiplier for gate parameters")
    precision: str = param(
        "auto", choices=("auto", "fp32", "bf16"), doc="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    compile: bool = param(False, doc="torch.compile the model")
    activation_checkpointing: bool = param(False, doc="recompute each block in the backward pass")
    device: str = param("auto", choices=("auto", "cpu", "cuda"), doc="auto picks CUDA when available")
    distributed: str = param("ddp", choices=("ddp", "fsdp"), doc="strategy under torchrun")
    log_every: int = param(10, ge=1, doc="steps between metrics.jsonl lines")
    eval_every: int = param(200, ge=0, doc="steps between validation passes; 0 disables")
    eval_batches: int = param(4, ge=1, doc="batches per validation pass")
    memory_use: bool = param(
        True,
        doc="each validation pass also takes the loss with the memory state reset at every chunk and "
        "with its read zeroed (memory_use/carry_gain, read_gain): two more forwards per batch",
    )
    memory_use_min_share: float = param(
        0.0,
        ge=0,
        doc="warn (or stop) when memory_use/carry_gain_share stays below this for memory_use_patience "
        "evaluations in a row, e.g. 0.01; 0 never does",
    )
    memory_use_patience: int = param(3, ge=1, doc="evaluations in a row below memory_use_min_share")
    memory_use_action: str = param(
        "warn",
        choices=("warn", "stop"),
        doc="on a low carry gain: a warning, or stop (the last checkpoint kept)",
    )
    checkpoint_every: int = param(500, ge=0, doc="steps between checkpoints; 0 keeps only the final one")
    keep_checkpoints: int = param(3, ge=1, doc="checkpoints kept on disk")

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages) if self.stages else self.steps

    def cross_check(self) -> None:
        if len(self.betas) != 2:
            raise ParamValueError("betas", "two numbers in [0, 1)", list(self.betas))
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ParamValueError(
                "micro_batch_size", f"a divisor of batch_size ({self.batch_size})", self.micro_batch_size
            )
