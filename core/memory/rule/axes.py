"""What each Miras axis provides to the memory engine.

Plugins subclass these (built-ins exactly like third-party plugins).  The engine keeps,
per batch element and head, the memory weights ``W`` (a dict of matrices, one per linear
map inside the memory, and a (d_out, 1) one per bias of an affine map) and applies, for
every token t,

    u_t = -theta_t * sum_{j in window(t)} gamma_j * omega^(t-j) * grad l(W_grad; k_j, v_j)
    S_t = eta_t * S_{t-1} + u_t                      (momentum; gd has no S: S_t = u_t)
    W_t = alpha_t * W_{t-1} + S_t
    y_t = M_{W_t}(q_t)

where ``W_grad`` is the weights at the start of the current chunk (mini-batch gradient
descent, Titans eq. 16-18), optionally decayed by the chunk's cumulative alpha (the
gated delta rule's convention).  Steps that are not linear in the gradients (Newton-
Schulz, q-normalisation, softmax, soft-thresholding) are chunk-end operations on the
materialised state; a chunk-end token reads the state after them.

An algorithm that is ``stateful`` replaces the S line with an optimizer of its own:
it declares its state (``StateDef``) and maps g_t and that state to (u_t, new state),

    u_t, state_t = algorithm.update(g_t, state_{t-1}, gates_t)
    W_t = alpha_t * W_{t-1} + u_t

which the engine runs token by token on both paths (``paths.general``), with g_t still
taken at the chunk-start weights.
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
    """Miras axis 1: the memory ``M(x)``, whose weights the inner loop learns.

    What an architecture may contain:

    * **named linear maps**, the memory's state: each declared with :meth:`make_init`
      (name, d_out, d_in), which also creates its learned initial value ``W_init[name]``
      (an outer parameter, trained through the inner loop), and applied in :meth:`forward`
      as ``linear(name, h)``, once per call of ``forward``.  ``make_init(..., bias=True)`` makes
      the map affine, ``linear(name, h) = W h + b``: the bias ``b`` is an inner weight
      of its own, ``"<name>_bias"`` of shape (d_out, 1) whose input is the constant 1, so
      it is written by the same update (momentum, decay, chunk ends) on every path.
    * **elementwise and per-token functions** between them: activations, gating, a
      residual, LayerNorm over a token's features.  Anything that mixes tokens is not
      allowed: M acts on one token at a time.
    * **outer parameters of its own** (``nn.Parameter`` attributes, e.g. a LayerNorm's
      gain and shift): fixed inside the sequence, trained by the outer loss like every
      other model parameter.  Name them for what they are (``ln_weight``, ``ln_bias``):
      which parameters weight decay spares is the optimizer's rule (docs/training.md).

    The engine supplies ``linear``: a plain matmul with the current weights, or the chunked
    dual form, and adds the biases itself; the inner gradient of each map is taken by
    autograd through ``forward`` unless :meth:`analytic_factors` writes it out.
    """

    shapes: dict[str, tuple[int, int]]
    linear_map: bool = False  # M(x) = W x with one weight "w" and no bias: the engine has faster paths

    def __init__(self, heads: int, d_in: int, d_out: int):
        super().__init__()
        self.heads, self.d_in, self.d_out = heads, d_in, d_out
        self.shapes = {}
        self.biases: dict[str, str] = {}  # linear map -> the name of its bias's inner weight
        self.init = nn.ParameterDict()

    def make_init(
        self,
        name: str,
        d_out: int,
        d_in: int,
        std: float | None = None,
        identity: bool = False,
        bias: bool = False,
    ) -> None:
        """A learned initial weight ``W_init[name]`` of shape (heads, d_out, d_in); with
        ``bias`` also ``W_init[name + "_bias"]``, (heads, d_out, 1), zero at the start."""
        self._declare(name)
        self.shapes[name] = (d_out, d_in)
        weight = torch.empty(self.heads, d_out, d_in)
        if identity:
            weight.zero_()
            eye = torch.eye(min(d_out, d_in))
            weight[:, : eye.shape[0], : eye.shape[1]] = eye
        else:
            nn.init.normal_(weight, std=std if std is not None else d_in**-0.5)
        self.init[name] = nn.Parameter(weight)
        if bias:
            bias_name = bias_of(name)
            self._declare(bias_name)
            self.shapes[bias_name] = (d_out, 1)
            self.init[bias_name] = nn.Parameter(torch.zeros(self.heads, d_out, 1))
            self.biases[name] = bias_name

    def _declare(self, name: str) -> None:
        if name in self.shapes:
            raise ValueError(f"{type(self).__name__}: inner weight {name!r} is declared twice")

    def affine(self, linear: Linear) -> Linear:
        """``linear`` (one matmul per inner weight) plus each map's bias: what ``forward`` gets.

        The bias is applied as the weight ``b`` of shape (d_out, 1) to a constant input 1,
        so ``linear`` needs no case for it: the dual form reads it, and autograd (or
        ``analytic_factors``) finds its gradient factors ``(1, delta)``, like any weight's.
        """
        if not self.biases:
            return linear
        biases = self.biases

        def with_bias(name: str, h: torch.Tensor) -> torch.Tensor:
            z = linear(name, h)
            if name not in biases:
                return z
            return z + linear(biases[name], h.new_ones(*h.shape[:-1], 1))

        return with_bias

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

        ``linear(name, h)`` applies a map (its bias included), ``transposed(name, delta)``
        back-propagates through its weight (delta W), ``dloss(pred)`` gives dl/dpred.  For
        each map ``z = W h (+ b)`` return its input ``h`` and ``delta = dl/dz``: the
        gradient of W is the outer product ``delta h^T`` (summed over tokens by the
        engine).  A bias needs no entry: the engine adds ``(1, delta)`` of its map.
        Return None (the default) and the engine differentiates ``forward`` with autograd
        instead; the kit's ``check_inner_factors`` holds the two equal.
        """
        return None


def bias_of(name: str) -> str:
    """The inner weight that holds the bias of linear map ``name``."""
    return f"{name}_bias"


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


STATE_SHAPES = ("entry", "row", "head")


@attrs.frozen
class StateDef:
    """One tensor a ``stateful`` algorithm carries from token to token.

    ``shape`` is relative to the memory's weights: ``"entry"`` one value per weight entry,
    (B, H, d_out, d_in) for each inner weight; ``"row"`` one per output row, (B, H, d_out, 1)
    for each inner weight; ``"head"`` one (B, H) tensor shared by all the weights.  Every
    value starts at ``init``.
    """

    name: str
    shape: str = "entry"
    init: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.shape not in STATE_SHAPES:
            raise ValueError(f"state {self.name}: shape must be one of {STATE_SHAPES}, got {self.shape!r}")


AlgorithmState = dict[str, Any]  # StateDef name -> {weight name: tensor} ("entry", "row") or a (B, H) tensor


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
    # the weights that are biases of linear maps, (B, H, d_out, 1) each: a step meant for
    # matrices (an orthogonalisation) leaves them as the chunk's linear update made them
    biases: frozenset[str] = frozenset()


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
    # its steps make sense on a map's bias, a (d_out, 1) weight (False: refused with a bias)
    takes_biases: bool = True

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
    takes_biases: bool = True  # as Retention.takes_biases
    # divide each token's gradient by sum_l ||h_l||^2, the squared norms of the inputs of the
    # memory's linear maps (normalised LMS): theta then means "the share of the error corrected"
    # whatever the memory's depth or width, as beta does in the delta rule with unit keys.  On by
    # default, as every built-in's ``normalized`` option is: an algorithm that never mentions it
    # takes the step docs/memory.md describes; set False for the raw gradient
    normalized: bool = True

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

    # an optimizer with state of its own (Nesterov, Adam, AdaGrad, deep momentum): the engine
    # then runs ``update`` token by token (``paths.general``) instead of its factored S_t / W_t
    stateful: bool = False

    def state_defs(self) -> list[StateDef]:
        """The state a ``stateful`` algorithm carries (``MemoryState.algorithm_state``)."""
        return []

    def attach(self, arch: MemoryArchitecture) -> None:
        """Called once by the rule with the memory it will train: create outer parameters shaped
        by its weights (``arch.shapes``, ``arch.heads``) here.  The default does nothing."""

    def update(self, grad: Weights, state: AlgorithmState, gates: Gates) -> tuple[Weights, AlgorithmState]:
        """One token of a ``stateful`` algorithm: (u_t, state_t) from g_t and state_{t-1}.

        ``grad``: g_t per inner weight, (B, H, d_out, d_in), taken at the chunk-start weights and
        divided by the inputs' squared norms when ``normalized``; ``state`` as ``state_defs``
        declares it; ``gates``: this token's {name: (B, H)} (log values for log_sigmoid gates).
        The engine then sets W_t = alpha_t W_{t-1} + u_t, so ``u`` carries the sign and theta_t.
        """
        raise NotImplementedError(f"{type(self).__name__} declares stateful but has no update()")


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
    if arch.biases and arch.linear_map:
        problems.append(
            f"memory {_name(arch)} declares linear_map (M(x) = W x, one weight) but has a bias: "
            "an affine memory must leave linear_map False"
        )
    for axis in (retention, algorithm):
        if arch.biases and not axis.takes_biases:
            problems.append(
                f"{'retention' if axis is retention else 'algorithm'} {_name(axis)} cannot update the "
                f"biases {sorted(arch.biases.values())} of memory {_name(arch)}: use a memory without "
                "biases (bias = false)"
            )
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
    if algorithm.stateful:
        problems += _stateful_problems(retention, algorithm, channelwise)
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


def _stateful_problems(
    retention: Retention, algorithm: LearningAlgorithm, channelwise: frozenset[str]
) -> list[str]:
    """What the general path (an algorithm with state of its own) does not run."""
    name = f"algorithm {_name(algorithm)} carries state of its own (the general path)"
    problems = []
    if algorithm.momentum or algorithm.nonlinear:
        problems.append(f"{name} and also declares momentum or nonlinear: put the whole step in update()")
    if not algorithm.state_defs():
        problems.append(f"{name} but declares no state_defs()")
    if channelwise:
        problems.append(
            f"{name}: channel-wise gates are not supported; set "
            + ", ".join(f"model.memory.gates.channelwise_{g} = false" for g in sorted(channelwise))
        )
    if retention.needs_decayed_update:
        problems.append(
            f"{name}: retention {_name(retention)} takes plain gradient steps; use algorithm 'gd'"
        )
    return problems


def _name(module: nn.Module) -> str:
    return repr(getattr(module, "component_name", type(module).__name__))
