"""What each Miras axis provides to the memory engine.

Plugins subclass these (built-ins exactly like third-party plugins).  The engine keeps,
per batch element and head, the memory weights ``W`` (a dict of matrices, one per linear
map inside the memory) and applies, for every token t,

    u_t = -theta_t * sum_{j in window(t)} gamma_j * omega^(t-j) * grad l(W_grad; k_j, v_j)
    S_t = eta_t * S_{t-1} + u_t                      (momentum; gd has no S: S_t = u_t)
    W_t = alpha_t * W_{t-1} + S_t
    y_t = M_{W_t}(q_t)

where ``W_grad`` is the weights at the start of the current chunk (mini-batch gradient
descent, Titans eq. 16-18), optionally decayed by the chunk's cumulative alpha (the
gated delta rule's convention).  Steps that are not linear in the gradients (Newton-
Schulz, q-normalisation, softmax, soft-thresholding) are chunk-end operations on the
materialised state; a chunk-end token reads the state after them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import nn


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32, or kept in fp64: gates, decays and chunk-end steps never run in bf16."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


Linear = Callable[[str, torch.Tensor], torch.Tensor]
Weights = dict[str, torch.Tensor]
Gates = dict[str, torch.Tensor]


@attrs.frozen
class GateDef:
    """A data-dependent gate produced from the layer input by a small projection, per head.

    ``value = scale * sigmoid(z)`` (``"sigmoid"``), ``log value = logsigmoid(z)``
    (``"log_sigmoid"``, for decays: exact near 1), or ``softplus(z)``.  ``init`` is the
    gate's value before training; the projection's bias is set to reach it.
    """

    name: str
    activation: str = "sigmoid"
    init: float = 0.5
    scale: float = 1.0
    channelwise: bool = False  # one value per value channel instead of per head

    def __attrs_post_init__(self) -> None:
        if self.activation not in ("sigmoid", "log_sigmoid", "softplus"):
            raise ValueError(f"gate {self.name}: unknown activation {self.activation!r}")


class MemoryArchitecture(nn.Module):
    """Miras axis 1.  ``M(x)`` built only from named linear maps and elementwise functions.

    Subclasses declare ``shapes`` (name -> (d_out, d_in)), create the learned initial
    weights with :meth:`make_init`, and write :meth:`forward` calling ``linear(name, h)``
    for every weight application.  The engine supplies ``linear``: a plain matmul with the
    current weights, or the chunked dual form.
    """

    shapes: dict[str, tuple[int, int]]
    linear_map: bool = False  # M(x) = W x with one weight "w": the engine has a faster path for it

    def __init__(self, heads: int, d_in: int, d_out: int):
        super().__init__()
        self.heads, self.d_in, self.d_out = heads, d_in, d_out
        self.shapes = {}
        self.init = nn.ParameterDict()

    def make_init(
        self, name: str, d_out: int, d_in: int, std: float | None = None, identity: bool = False
    ) -> None:
        """A learned initial weight ``W_init[name]`` of shape (heads, d_out, d_in)."""
        self.shapes[name] = (d_out, d_in)
        weight = torch.empty(self.heads, d_out, d_in)
        if identity:
            weight.zero_()
            eye = torch.eye(min(d_out, d_in))
            weight[:, : eye.shape[0], : eye.shape[1]] = eye
        else:
            nn.init.normal_(weight, std=std if std is not None else d_in**-0.5)
        self.init[name] = nn.Parameter(weight)

    def forward(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def analytic_factors(
        self,
        x: torch.Tensor,
        linear: Linear,
        transposed: Linear,
        dloss: Callable[[torch.Tensor], torch.Tensor],
    ) -> dict[str, tuple] | None:
        """Optional fast path: ``{name: (h, delta)}`` written out by hand, no autograd.

        ``linear(name, h)`` applies a weight, ``transposed(name, delta)`` back-propagates
        through it (delta W), ``dloss(pred)`` gives dl/dpred.  Return None (the default)
        and the engine differentiates ``forward`` with autograd instead; the test
        ``test_analytic_factors_equal_autograd`` holds the two equal.
        """
        return None


class AttentionalBias(nn.Module):
    """Miras axis 2: the inner objective l(M(k), v) the memory learns to minimise.

    ``window`` > 1 makes the update at t use the gradients of the last ``window`` tokens
    (the Omega rule), each weighted by its gate ``gamma_j`` (``window_gate``) and by
    ``window_decay ** (t - j)``.
    """

    window: int = 1
    window_decay: float = 1.0
    window_gate: str | None = None

    def gates(self) -> list[GateDef]:
        return []

    def loss(self, pred: torch.Tensor, target: torch.Tensor, gates: Gates) -> torch.Tensor:
        """Per-token loss (..., tokens) for predictions and targets (..., tokens, d)."""
        raise NotImplementedError

    def gradient(self, pred: torch.Tensor, target: torch.Tensor, gates: Gates) -> torch.Tensor | None:
        """Optional: dl/dpred written out (faster than autograd); None differentiates ``loss``."""
        return None

    # When dl/dpred = slope * pred + gradient_offset(target, gates) with a constant slope
    # (l2: 1 and -v; dot: 0 and -v), a matrix memory's chunks can be computed in one batch.
    gradient_slope: float | None = None

    def gradient_offset(self, target: torch.Tensor, gates: Gates) -> torch.Tensor:
        raise NotImplementedError


@dataclasses.dataclass
class ChunkEnd:
    """The materialised state at the end of a chunk, handed to non-linear steps."""

    start: Weights  # weights at the chunk start (the gradient point)
    weights: Weights  # weights after the chunk's linear updates
    momentum: Weights | None
    log_decay: torch.Tensor  # (B, H): sum of the chunk's log alpha (the dynamics' alpha)
    sums: dict[str, torch.Tensor]  # (B, H) each: the chunk sums its axes declared (``chunk_sums``)
    extra: dict[str, Any]
    decayed_update: Weights | None  # sum_j prod_{i>j} alpha_i * u_j with the retention's own alpha
    aux_log_decay: torch.Tensor | None


class DeclaresChunkSums:
    """An axis with a chunk-end step may carry state of its own through each chunk."""

    def chunk_sums(self) -> dict[str, Callable[[Gates], torch.Tensor]]:
        """State of the axis's own, carried through each chunk: name -> x(gates), (B, H, T) per
        token.  The engine keeps s = sum_i prod_{j>i} alpha_j x_i since the chunk start (both
        paths, any split of the sequence) and hands it to ``chunk_end`` as ``end.sums[name]``;
        names are shared across axes, so prefix them with the axis's name."""
        return {}


class Retention(DeclaresChunkSums, nn.Module):
    """Miras axis 3: how the memory forgets.  The linear part is a decay alpha_t."""

    decay_gate: str | None = None  # the gate log_alpha reads: it can be made channel-wise
    gradient_at_decayed: bool = False  # take gradients at alpha-decayed weights (gated delta rule)
    nonlinear: bool = False  # has a chunk-end step
    needs_decayed_update: bool = False  # the chunk-end step needs ChunkEnd.decayed_update

    def gates(self) -> list[GateDef]:
        return []

    def log_alpha(self, gates: Gates) -> torch.Tensor | None:
        """log alpha_t (B, H, T), or channel-wise (B, H, T, d_v), of the within-chunk dynamics;
        None for alpha = 1."""
        return None

    def aux_log_alpha(self, gates: Gates) -> torch.Tensor | None:
        """log alpha of ``decayed_update`` (only when ``needs_decayed_update``)."""
        return None

    def initial(self, learned: Weights) -> tuple[Weights, dict[str, Any]]:
        """Weights and extra state at t = 0 from the architecture's learned W_init."""
        return dict(learned), {}

    def lr_scale(self, extra: dict[str, Any], name: str) -> torch.Tensor | float:
        """Factor on the updates of weight ``name`` inside a chunk (B, H) or a float."""
        return 1.0

    def chunk_end(self, end: ChunkEnd) -> tuple[Weights, Weights | None, dict[str, Any]]:
        return end.weights, end.momentum, end.extra


class LearningAlgorithm(DeclaresChunkSums, nn.Module):
    """Miras axis 4: the optimizer of the inner loop.  ``theta`` is its learning rate."""

    momentum: bool = False
    momentum_gate: str | None = None  # the gate log_eta reads: it can be made channel-wise
    nonlinear: bool = False
    # divide each token's gradient by sum_l ||h_l||^2, the squared norms of the inputs of the
    # memory's linear maps (normalised LMS): theta then means "the share of the error corrected"
    # whatever the memory's depth or width, as beta does in the delta rule with unit keys
    normalized: bool = False

    def gates(self) -> list[GateDef]:
        return []

    def lr(self, gates: Gates) -> torch.Tensor:
        """theta_t: (B, H, T) or channel-wise (B, H, T, d_v)."""
        return gates["lr"]

    def log_eta(self, gates: Gates) -> torch.Tensor | None:
        """log eta_t (B, H, T) or channel-wise (B, H, T, d_v), the momentum decay, when ``momentum``."""
        return None

    def chunk_end(self, end: ChunkEnd) -> Weights:
        return end.weights


class FeatureMap(nn.Module):
    """phi applied to keys and queries before the memory (``out_dim`` may differ from ``dim``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.out_dim = dim

    def forward(self, x: torch.Tensor, query: bool = False) -> torch.Tensor:
        """Features of keys (``query=False``) or queries; the two may differ (asymmetric maps)."""
        return x


CHANNELWISE = ("lr", "window", "decay", "momentum")  # the gates that can be one per value channel


def check_parts(
    arch: MemoryArchitecture,
    bias: AttentionalBias,
    retention: Retention,
    algorithm: LearningAlgorithm,
    channelwise: frozenset[str] = frozenset(),
) -> list[str]:
    """Combinations the engine cannot run (or that make no sense), as sentences."""
    problems = []
    if retention.nonlinear and algorithm.nonlinear:
        problems.append(
            f"retention {_name(retention)} and algorithm {_name(algorithm)} both change the state at "
            "chunk ends and do not compose; use retention 'decay' or 'none' with this algorithm"
        )
    if clash := sorted(retention.chunk_sums().keys() & algorithm.chunk_sums().keys()):
        problems.append(
            f"retention {_name(retention)} and algorithm {_name(algorithm)} both declare chunk sums {clash}"
        )
    if retention.needs_decayed_update and algorithm.momentum:
        problems.append(f"retention {_name(retention)} takes plain gradient steps: use algorithm 'gd'")
    if bias.window > 1 and retention.gradient_at_decayed:
        problems.append(
            "the Omega window (bias window > 1) needs gradients at the chunk-start weights; "
            'set the retention\'s gradient_at = "previous"'
        )
    unknown = sorted(channelwise - set(CHANNELWISE))
    if unknown:
        problems.append(f"unknown channel-wise gate(s) {unknown}: expected some of {list(CHANNELWISE)}")
    if bias.window > 1 and "lr" in channelwise:
        problems.append("a channel-wise learning rate needs bias window 1 (the Omega rule sums over tokens)")
    if "window" in channelwise and bias.window_gate is None:
        problems.append(
            f"channel-wise window gates need a bias with window gates (omega with gated = true), not {_name(bias)}"
        )
    if "decay" in channelwise and retention.decay_gate is None:
        problems.append(
            f"a channel-wise decay needs a retention with a decay gate alpha_t, not {_name(retention)}"
        )
    if "momentum" in channelwise and algorithm.momentum_gate is None:
        problems.append(
            f"a channel-wise momentum needs an algorithm with a momentum gate eta_t, not {_name(algorithm)}"
        )
    decays = sorted(channelwise & {"decay", "momentum"})
    if decays and not arch.linear_map:
        problems.append(
            f"a channel-wise {' and '.join(decays)} scales the rows (value channels) of a matrix memory; "
            f"memory {_name(arch)} has hidden layers without value channels: use memory 'linear'"
        )
    if "decay" in channelwise and algorithm.nonlinear:
        problems.append(
            f"algorithm {_name(algorithm)} scales its chunk-end step by one decay per head: "
            "a channel-wise decay needs algorithm 'gd' or 'momentum'"
        )
    return problems


def _name(module: nn.Module) -> str:
    return repr(getattr(module, "component_name", type(module).__name__))
