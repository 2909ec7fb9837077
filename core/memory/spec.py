"""The recipe table of one Miras memory: ``[model.memory]``.

The four Miras axes (memory architecture, attentional bias, retention gate, learning
algorithm) plus the key/query feature map are components, each with its own params;
the rest are the layer's shape and the Titans block around the memory.
"""

from __future__ import annotations

import attrs

from ..params import component_field, component_type, param

MemoryComponent = component_type("memory")
BiasComponent = component_type("bias")
RetentionComponent = component_type("retention")
AlgorithmComponent = component_type("algorithm")
FeaturesComponent = component_type("features")


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
        choices=("mini_batch", "per_token"),
        doc="inner-loop semantics: mini_batch takes every gradient of a chunk at the chunk-start state "
        "(Titans eq. 16-18); per_token takes each token's at the state the previous token left "
        "(DeltaNet, Gated DeltaNet: exact at any chunk size; matrix memories with l2 or dot, gd or momentum)",
    )
    kernel: str = param(
        "auto",
        choices=("auto", "fla", "native"),
        doc="who runs per-token steps of the delta-rule family (linear, l2, gd, retention none or decay "
        "at the decayed state): auto uses flash-linear-attention's kernels on CUDA where installed "
        "(the [gpu] extra), else miraslab's own; fla forces them (an error where they cannot run); "
        "native never uses them",
    )
    path: str = param("chunked", choices=("chunked", "recurrent"), doc="execution path for training")
    conv_kernel: int = param(4, ge=0, doc="causal depthwise convolution on q/k/v; 0 disables")
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
