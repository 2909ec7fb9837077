"""The recipe table of a language model: ``[model]``."""

from __future__ import annotations

import attrs

from ..memory.spec import MemorySpec, TNTSpec
from ..params import ParamValueError, component_field, component_type, param

LayoutComponent = component_type("layout")
AttentionComponent = component_type("attention")


@attrs.frozen
class AttentionSpec:
    """Attention inside a block: backend, sliding window and persistent tokens."""

    backend: AttentionComponent = component_field("attention", "sdpa", "attention backend plugin")
    window: int = param(0, ge=0, doc="sliding window in tokens; 0 means full causal attention")
    head_dim: int = param(0, ge=0, doc="width per head; 0 uses d_model // n_heads (made even for RoPE)")
    persistent_tokens: int = param(0, ge=0, doc="learned tokens prepended to every attention's keys")
    rope: bool = param(True, doc="rotary position embeddings on queries and keys")
    rope_base: float = param(10000.0, gt=0, doc="RoPE base frequency")
    train_window: tuple[int, ...] = param(
        factory=tuple,
        ge=1,
        doc="[low, high]: in training, a window drawn per step from low..high (SWAX, arXiv 2509.24552), "
        "the same for a seed and step; window at evaluation and decode; empty: off",
    )
    branch_dropout: float = param(
        0.0,
        ge=0,
        lt=1,
        doc="in training, the share of tokens (or rows) whose attention reads no context, only the token "
        "itself, so that a hybrid's memory must answer for them; 0: off",
    )
    branch_dropout_unit: str = param(
        "token", choices=("token", "row"), doc="what branch_dropout drops: single tokens or whole rows"
    )

    def cross_check(self) -> None:
        if self.train_window and (len(self.train_window) != 2 or self.train_window[0] > self.train_window[1]):
            raise ParamValueError(
                "train_window", "two windows [low, high] with 1 <= low <= high", self.train_window
            )
        if self.train_window and self.window == 0:
            raise ParamValueError(
                "train_window", "a sliding window to vary (window >= 1, not 0)", self.train_window
            )


@attrs.frozen
class SeedInitSpec:
    """Initial weights from a local Hugging Face Llama-family checkpoint (SmolLM's architecture)."""

    from_: str = param(
        key="from",
        doc="a Hugging Face model directory (config.json + *.safetensors); relative to the recipe file",
    )
    strict: bool = param(
        True,
        doc="refuse a checkpoint whose RoPE base, RMSNorm epsilon, heads, activation, biases or tied "
        "head differ from the recipe's; false loads the weights anyway and reports the differences",
    )
    memory_from_mlp: bool = param(
        False,
        doc="also start each memory's W_init from the same layer's MLP (w1, w3, w2 from gate, up, "
        "down; ad hoc level stacking); a memory head's weights must have the MLP's shapes",
    )


@attrs.frozen
class ModelSpec:
    """Embeddings, ``n_layers`` blocks of the layout, RMSNorm, a tied or untied head."""

    vocab_size: int = param(32000, ge=2, doc="vocabulary size (a task may set it from its tokenizer)")
    d_model: int = param(512, ge=1, doc="residual stream width")
    n_layers: int = param(6, ge=1, doc="number of blocks")
    n_heads: int = param(8, ge=1, doc="attention heads")
    d_ff: int = param(0, ge=0, doc="SwiGLU hidden width; 0 means 8/3 d_model rounded up to 64")
    layout: LayoutComponent = component_field("layout", "mag", "block layout plugin")
    attention: AttentionSpec = attrs.field(factory=AttentionSpec, metadata={"doc": "attention settings"})
    memory: MemorySpec = attrs.field(factory=MemorySpec, metadata={"doc": "the neural memory"})
    tnt: TNTSpec | None = attrs.field(
        default=None, metadata={"doc": "TNT global+local memories; omit for one memory"}
    )
    tie_embeddings: bool = param(True, doc="share the input embedding with the output head")
    norm_eps: float = param(1e-6, gt=0, doc="RMSNorm epsilon")
    init_std: float = param(0.02, gt=0, le=10, doc="standard deviation of weight initialisation")
    dropout: float = param(0.0, ge=0, lt=1, doc="dropout on the residual branches")
    init: SeedInitSpec | None = attrs.field(
        default=None,
        metadata={"doc": "start from a Llama-family checkpoint's weights; omit for a random init"},
    )

    def cross_check(self) -> None:
        # heads narrower than 2 channels cannot work; widths need not divide d_model
        # (the projections map d_model to heads * head_dim and back)
        if self.d_model // self.n_heads < 2 and not self.attention.head_dim:
            raise ParamValueError("n_heads", f"at most d_model / 2 ({self.d_model // 2})", self.n_heads)
        heads = self.memory.heads or self.n_heads
        if self.d_model // heads < 1 and not self.memory.head_dim:
            raise ParamValueError("memory.heads", f"at most d_model ({self.d_model})", heads)
