"""The recipe table of one Miras memory, ``[model.memory]``, and of TNT's hierarchy, ``[model.tnt]``.

The four Miras axes (memory architecture, attentional bias, retention gate, learning
algorithm) plus the key/query feature map are components, each with its own params;
the rest are the layer's shape and the Titans block around the memory.

The spec travels whole: ``MemoryLayer``, ``NeuralMemory`` and ``build_rule`` each take it
and read the keys they use, so a new key touches this class and the code that reads it.
Without a recipe, :meth:`MemorySpec.from_options` structures keywords into it exactly as a
recipe's table is structured.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..params import ParamValueError, component_field, component_type, param, structure

PATHS = ("chunked", "recurrent")
INNER_STEPS = ("mini_batch", "per_token")
READS = ("token", "chunk")

MemoryComponent = component_type("memory")
BiasComponent = component_type("bias")
RetentionComponent = component_type("retention")
AlgorithmComponent = component_type("algorithm")
FeaturesComponent = component_type("features")
MixerComponent = component_type("mixer")


@attrs.frozen
class GatesSpec:
    """How the data-dependent gates (theta, alpha, eta, gamma, ...) are produced."""

    channelwise_lr: bool = param(
        False, doc="learning rate theta per value channel (Miras), through a low-rank projection"
    )
    channelwise_window: bool = param(
        False,
        doc="the Omega rule's window gates gamma_i per value channel, through a low-rank projection "
        "(needs bias omega with gated = true)",
    )
    channelwise_decay: bool = param(
        False,
        doc="the retention's decay alpha_t per value channel (the rows of a matrix memory), through a "
        "low-rank projection (needs memory linear)",
    )
    channelwise_momentum: bool = param(
        False,
        doc="the momentum decay eta_t per value channel (the rows of a matrix memory), through a "
        "low-rank projection (needs memory linear)",
    )
    rank: int = param(16, ge=1, doc="rank of the channel-wise projections")

    def channelwise(self) -> frozenset[str]:
        """The channel-wise gates, as ``MemoryRule`` names them."""
        flags = {
            "lr": self.channelwise_lr,
            "window": self.channelwise_window,
            "decay": self.channelwise_decay,
            "momentum": self.channelwise_momentum,
        }
        return frozenset(role for role, on in flags.items() if on)


@attrs.frozen
class MemorySpec:
    """One neural memory layer: ``y_t = M_t(phi(q_t))``, written by one learning step per token."""

    memory: MemoryComponent = component_field("memory", "mlp", "memory architecture (Miras axis 1)")
    bias: BiasComponent = component_field("bias", "l2", "attentional bias: the inner objective (axis 2)")
    retention: RetentionComponent = component_field("retention", "decay", "retention gate (axis 3)")
    algorithm: AlgorithmComponent = component_field("algorithm", "momentum", "learning algorithm (axis 4)")
    features: FeaturesComponent = component_field(
        "features", "identity", "feature map phi on keys and queries"
    )
    heads: int = param(0, ge=0, doc="memory heads; 0 uses model.n_heads")
    head_dim: int = param(0, ge=0, doc="key and value width per head; 0 uses d_model / heads")
    chunk_size: int = param(
        64, ge=1, doc="tokens per chunk: per mini-batch step (mini_batch), or per parallel block (per_token)"
    )
    inner_steps: str = param(
        "mini_batch",
        choices=INNER_STEPS,
        doc="inner-loop semantics: mini_batch takes every gradient of a chunk at the chunk-start state "
        "(Titans eq. 16-18); per_token takes each token's at the state the previous token left "
        "(DeltaNet, Gated DeltaNet: exact at any chunk size; matrix memories with l2 or dot, gd or momentum)",
    )
    reads: str = param(
        "token",
        choices=READS,
        doc="which weights a token reads: token reads M_t, the weights after the updates of its chunk's "
        "tokens up to itself (y_t = M_t(q_t)); chunk reads every token of a chunk at the chunk-start "
        "weights, as titans-pytorch does (other semantics: cheaper, no intra-chunk term; needs "
        "inner_steps mini_batch)",
    )
    kernel: str = param(
        "auto",
        choices=("auto", "fla", "native"),
        doc="who runs per-token steps of the delta-rule family (linear, l2, gd, retention none or decay "
        "at the decayed state): auto uses flash-linear-attention's kernels on CUDA where installed "
        "(the [gpu] extra), else miraslab's own; fla forces them (an error where they cannot run); "
        "native never uses them",
    )
    path: str = param("chunked", choices=PATHS, doc="execution path for training")
    conv_kernel: int = param(4, ge=0, doc="causal depthwise convolution on q/k/v; 0 disables")
    conv_init: str = param(
        "default",
        choices=("default", "shift_keys"),
        doc="the q/k/v convolution's init: default is PyTorch's; shift_keys starts keys on the previous "
        "token and queries and values on the current one, with W_k = W_q (H3's shift for associative "
        "recall: token t writes x_{t-1} -> x_t, and a query for x_{t-1} reads x_t back)",
    )
    activation: str = param("silu", choices=("silu", "identity"), doc="activation on q/k/v (Titans)")
    qk_norm: bool = param(True, doc="l2-normalise queries and keys")
    output_norm: bool = param(True, doc="RMSNorm on the memory read-out before the output projection")
    qk_projection: bool = param(False, doc="project queries onto the span of past keys (TNT eq. 7)")
    compile_chunks: bool = param(
        False,
        doc="torch.compile the chunked path's per-chunk step once and reuse it for every chunk and "
        "sequence length (deep memories, Omega windows, channel-wise decays; seconds to compile, "
        "eager if it fails)",
    )
    gates: GatesSpec = attrs.field(factory=GatesSpec, metadata={"doc": "gate projections"})

    def cross_check(self) -> None:
        if self.reads == "chunk" and self.inner_steps == "per_token":
            raise ParamValueError(
                "reads",
                "'token' with inner_steps 'per_token' (chunks of per-token steps "
                "are a block size, not semantics)",
                self.reads,
            )
        if self.conv_init == "shift_keys" and self.conv_kernel < 2:
            raise ParamValueError(
                "conv_kernel",
                "at least 2 with conv_init 'shift_keys' (a tap one token back)",
                self.conv_kernel,
            )

    @classmethod
    def from_options(cls, **options: Any) -> MemorySpec:
        """``[model.memory]`` from keywords (its keys; components as names, tables or
        Components), structured and validated as a recipe's table is: the no-recipe entrance.

        The run options the functional op shares are refused first in its words (``chunk_size
        must be >= 1, got 0``), as the keyword layer always refused them; the rest, in a
        recipe's (``key: expected ..., got ...``)."""
        check_run_options(
            **{key: options[key] for key in ("path", "chunk_size", "inner_steps", "reads") if key in options}
        )
        return structure(options, cls)

    def shape(self, dim: int, n_heads: int) -> tuple[int, int]:
        """(heads, head_dim) of a memory in a ``dim``-wide model of ``n_heads`` heads."""
        heads = self.heads or n_heads
        return heads, self.head_dim or dim // heads


def check_run_options(
    path: str = PATHS[0], chunk_size: int = 1, inner_steps: str = INNER_STEPS[0], reads: str = READS[0]
) -> None:
    """The engine's run options, as the functional op and the keyword constructors word them."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if isinstance(chunk_size, int) and chunk_size < 1:  # a non-integer is structuring's to refuse
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if inner_steps not in INNER_STEPS:
        raise ValueError(f"inner_steps must be one of {INNER_STEPS}, got {inner_steps!r}")
    if reads not in READS:
        raise ValueError(f"reads must be one of {READS}, got {reads!r}")
    if reads == "chunk" and inner_steps == "per_token":
        raise ValueError(
            "reads = 'chunk' needs inner_steps = 'mini_batch' (per-token chunks are a block size)"
        )


@attrs.frozen
class TNTSpec:
    """TNT hierarchy (arXiv 2511.07343): one global memory plus local memories reset per shard."""

    global_chunk: int = param(2048, ge=1, doc="chunk size of the global memory")
    local_chunks: tuple[int, ...] = param(factory=lambda: (256,), ge=1, doc="chunk size of each local memory")
    shard_length: int = param(
        2048, ge=1, doc="local memories reset to their learned W_init every this many tokens"
    )
    local_qk_projection: bool = param(True, doc="Q-K projection on the local memories' queries (TNT eq. 7)")
    mixer: MixerComponent = component_field("mixer", "sum", "how local and global read-outs combine")

    def cross_check(self) -> None:
        if not self.local_chunks:
            raise ParamValueError("local_chunks", "at least one local memory chunk size", [])
        for chunk in self.local_chunks:
            if self.shard_length % chunk:
                raise ParamValueError(
                    "shard_length",
                    f"a multiple of every local chunk size {list(self.local_chunks)}",
                    self.shard_length,
                )
