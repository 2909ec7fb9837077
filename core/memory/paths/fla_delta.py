"""flash-linear-attention's delta-rule kernels behind the per-token delta family.

FLA (github.com/fla-org/flash-linear-attention) runs the same two recurrences as our
per-token path for a matrix memory with the l2 bias and gd (``paths.chunked_per_token``):

    ours  W_t = alpha_t W_{t-1} - beta_t (s g_t W_{t-1} k_t + b_t) k_t^T,   y_t = W_t q_t
    FLA   S_t = e^{g_t} S_{t-1} + k_t (beta'_t (v'_t - (e^{g_t} S_{t-1})^T k_t))^T,  o_t = scale S_t^T q_t

(the delta rule, arXiv 2406.06484; the gated delta rule, arXiv 2412.06464 eq. 10), so with

    S = W^T  ([B, H, K, V] against our (B, H, d_v, d_k)),   scale = 1 (our reads are W q),
    beta' = s beta  (beta = theta, or theta / ||k||^2 for gd ``normalized``: the normalised
    LMS step, taken here, not by FLA's ``use_qk_l2norm_in_kernel``, which would also change q),
    v' = -b / s  (l2: b = -v, s = 1, so v' = v),   g = log alpha  (none: alpha = 1)

they agree where the gradient is taken at the decayed state alpha_t W_{t-1} (retention
``decay`` with ``gradient_at = "decayed"``), or where nothing decays (retention ``none``).
Gates must be one value per head (FLA's beta and g are [B, T, H]); no momentum.

Training calls the chunk kernels (``chunk_gated_delta_rule``; for the plain delta rule
``chunk_delta_rule`` in bf16/fp16, which refuses float32, and the gated kernel at g = 0 in
float32); the recurrent path without gradients (decoding) calls the fused recurrent ones
(FLA's gated one has no backward).  The state
goes back into a closed ``MemoryState`` exactly as ``chunked_per_token`` leaves it, so a
state from one path continues on the other.

Which backend runs is the recipe key ``model.memory.kernel``: ``"auto"`` (FLA where the
rule, the device (CUDA) and the installed package allow it, else ours), ``"fla"`` (FLA or
an error naming the key), ``"native"`` (always ours).  The first call of each choice prints
one line to stderr saying which ran and why.

The kernels are looked up once; :func:`use_kernels` puts others in their place (the tests
drive this adapter on the CPU with FLA's pure-PyTorch reference recurrences).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import sys
from collections.abc import Callable, Iterator

import torch

from ..rule.axes import Gates, Retention
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState

KERNELS = ("auto", "fla", "native")
KEY = "model.memory.kernel"
HALF = (torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256  # FLA's chunk kernels assert K <= 256
INSTALL = "pip install 'miraslab[gpu]' (flash-linear-attention and triton, CUDA only)"


@dataclasses.dataclass(frozen=True)
class FLAKernels:
    """FLA's four entry points, with FLA's signatures ([B, T, H, d] inputs, [B, H, K, V] state)."""

    chunk_delta: Callable
    chunk_gated: Callable
    recurrent_delta: Callable
    recurrent_gated: Callable
    version: str
    devices: frozenset[str] = frozenset({"cuda"})
    dtypes: frozenset[torch.dtype] = frozenset({torch.float32, torch.bfloat16, torch.float16})


_override: FLAKernels | None = None
_announced: set[str] = set()


@functools.cache
def _installed() -> FLAKernels | str:
    """FLA's kernels, or why they cannot be imported here (one line)."""
    if importlib.util.find_spec("fla") is None:
        return f"flash-linear-attention is not installed ({INSTALL})"
    try:
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception as error:  # no triton on a CPU-only install, or an API change upstream
        return f"flash-linear-attention does not import ({type(error).__name__}: {error})"
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("fla-core")
    except PackageNotFoundError:
        found = "unknown version"
    return FLAKernels(
        chunk_delta_rule,
        chunk_gated_delta_rule,
        fused_recurrent_delta_rule,
        fused_recurrent_gated_delta_rule,
        found,
    )


def kernels() -> FLAKernels | str:
    """The kernels in use (an override from :func:`use_kernels`, else FLA's), or why there are none."""
    return _override if _override is not None else _installed()


@contextlib.contextmanager
def use_kernels(replacement: FLAKernels) -> Iterator[FLAKernels]:
    """Run FLA's part of the adapter through ``replacement`` inside the block."""
    global _override
    previous, _override = _override, replacement
    try:
        yield replacement
    finally:
        _override = previous


def rule_problem(rule: MemoryRule) -> str | None:
    """Why FLA's delta rules cannot run ``rule`` with per-token steps (None: they can)."""
    arch, bias, retention, algorithm = rule.arch, rule.bias, rule.retention, rule.algorithm
    if not arch.linear_map:
        return "FLA's kernels hold a single matrix memory (memory = 'linear')"
    if bias.gradient_slope is None or bias.gradient_slope <= 0 or bias.window > 1:
        return "FLA's kernels need an error term s W k + b with s > 0 and one token per step (bias = 'l2')"
    if algorithm.momentum or algorithm.nonlinear or algorithm.stateful:
        return "FLA's kernels take one plain gradient step per token (algorithm = 'gd')"
    plain = type(retention).lr_scale is Retention.lr_scale and type(retention).initial is Retention.initial
    if retention.nonlinear or retention.needs_decayed_update or not plain:
        return "FLA's kernels decay the state by a scalar per token (retention = 'none' or 'decay')"
    if retention.decay_gate is not None and not retention.gradient_at_decayed:
        return "FLA's gated delta rule takes the gradient at the decayed state (retention gradient_at = 'decayed')"
    if rule.channelwise_lr or rule.channelwise_decay:
        return "FLA's beta and g are one value per head (no channel-wise lr or decay gates)"
    return None


def check_kernel(kernel: str, rule: MemoryRule, inner_steps: str) -> None:
    """At construction: ValueError (one line, naming the key) unless ``kernel`` can run."""
    if kernel not in KERNELS:
        raise ValueError(f"{KEY} must be one of {KERNELS}, got {kernel!r}")
    if kernel != "fla":
        return
    if inner_steps != "per_token":
        raise ValueError(
            f"{KEY} = 'fla' runs per-token steps only; set model.memory.inner_steps = 'per_token'"
        )
    if (problem := rule_problem(rule)) is not None:
        raise ValueError(f"{KEY} = 'fla': {problem}; use kernel = 'native' or 'auto'")
    if isinstance(found := kernels(), str):
        raise ValueError(f"{KEY} = 'fla': {found}; use kernel = 'native' or 'auto'")


def _announce(line: str) -> None:
    if not torch.compiler.is_compiling() and line not in _announced:
        _announced.add(line)
        print(f"miraslab: {line}", file=sys.stderr, flush=True)


def choose(
    kernel: str, rule: MemoryRule, q: torch.Tensor, state: MemoryState | None, path: str
) -> FLAKernels | None:
    """The kernels to run this per-token call with, or None for our own path.

    ``kernel = "fla"`` where FLA cannot run this call raises ValueError naming the key."""
    if kernel not in KERNELS:
        raise ValueError(f"{KEY} must be one of {KERNELS}, got {kernel!r}")
    if kernel == "native":
        _announce(f"per-token memory on miraslab's own {path} path ({KEY} = 'native')")
        return None
    problem = rule_problem(rule)
    if problem is None and state is not None and state.offset:
        problem = "the state is part-way through a mini-batch chunk"
    if problem is None and _override is None and q.device.type != "cuda":  # no import of fla on a CPU
        problem = f"the tensors are on {q.device.type}, FLA's kernels run on CUDA"
    found = kernels() if problem is None else None
    if isinstance(found, str):
        problem = found
    elif found is not None and q.device.type not in found.devices:
        problem = (
            f"the tensors are on {q.device.type}, these kernels run on {'/'.join(sorted(found.devices))}"
        )
    elif found is not None and q.dtype not in found.dtypes:
        problem = f"FLA's kernels take float32, bfloat16 or float16, the tensors are {q.dtype}"
    elif found is not None and q.shape[-1] > MAX_HEAD_DIM:
        problem = f"FLA's kernels take keys of width <= {MAX_HEAD_DIM}, these are {q.shape[-1]} wide"
    if problem is not None:
        if kernel == "fla":
            raise ValueError(f"{KEY} = 'fla': {problem}; use kernel = 'native' or 'auto'")
        _announce(f"per-token memory on miraslab's own {path} path ({KEY} = 'auto': {problem})")
        return None
    assert isinstance(found, FLAKernels)
    _announce(
        f"per-token memory on flash-linear-attention {found.version} kernels "
        f"({KEY} = {kernel!r}: the delta-rule family on {q.device.type})"
    )
    return found


def decoding(path: str, q: torch.Tensor) -> bool:
    """Whether a call runs FLA's fused recurrent kernels: without gradients (the gated one has no
    backward), on the recurrent path or for fewer tokens than FLA's chunk block of 64 (a decode
    step, a short prompt: the chunk form gains nothing there)."""
    return not torch.is_grad_enabled() and (path == "recurrent" or q.shape[2] < 64)


def fla_state(weights: torch.Tensor) -> torch.Tensor:
    """Our matrix memory W (B, H, d_v, d_k) as FLA's state S = W^T [B, H, K, V]."""
    return weights.transpose(-1, -2)


def weights_from_fla(state: torch.Tensor) -> torch.Tensor:
    """FLA's state S [B, H, K, V] as our matrix memory W = S^T (B, H, d_v, d_k)."""
    return state.transpose(-1, -2)


def fla_inputs(
    rule: MemoryRule, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: Gates
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Our (B, H, T, d) q, k, v and gates as FLA's [B, T, H, d] q, k, v', beta' [B, T, H] and
    g [B, T, H] (None: no decay), by the conventions of the module docstring."""
    work = torch.promote_types(q.dtype, torch.float32)
    slope = float(rule.bias.gradient_slope)
    bias_gates = {name: gates[name] for name in rule.bias_gate_names()}
    offset = rule.bias.gradient_offset(v, bias_gates).to(work).expand_as(v)  # b
    beta = rule.algorithm.lr(gates).to(work)
    if rule.algorithm.normalized:  # normalised LMS, as chunked_per_token divides theta
        beta = beta / k.to(work).pow(2).sum(-1).clamp_min(1e-6)
    values = offset / -slope  # v' = -b / s
    beta = beta * slope  # beta' = s beta
    log_alpha = rule.retention.log_alpha(gates)
    g = log_alpha.to(work).transpose(1, 2) if log_alpha is not None else None
    return (
        q.transpose(1, 2),
        k.transpose(1, 2),
        values.transpose(1, 2),
        beta.transpose(1, 2),
        g,
    )


def fla_per_token(
    found: FLAKernels,
    rule: MemoryRule,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    state: MemoryState,
    recurrent: bool,
) -> tuple[torch.Tensor, MemoryState]:
    """The per-token memory through FLA: reads (B, H, T, d_v) and the closed state after T tokens.

    ``recurrent``: the fused recurrent kernels (decoding); else the chunk kernels, which
    also carry the backward (FLA's fused recurrent gated rule has none)."""
    work = torch.promote_types(q.dtype, torch.float32)
    # FLA's kernels take q, k, v and beta in one dtype (bf16 under autocast, else the
    # inputs'), g in float32 (its cumulative sums), and keep the state in float32: as FLA's
    # own GatedDeltaNet layer calls them
    device = q.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype
    qf, kf, vf, beta, g = fla_inputs(rule, q, k, v, gates)
    qf, kf, vf, beta = (x.to(dtype).contiguous() for x in (qf, kf, vf, beta))
    if g is None and not recurrent and dtype not in HALF:
        # chunk_delta_rule refuses float32 (an assert): the gated rule at g = 0 is the delta rule
        g = torch.zeros_like(beta, dtype=work)
    g = g.to(work).contiguous() if g is not None else None
    initial = fla_state(state.weights["w"]).to(torch.promote_types(dtype, torch.float32)).contiguous()
    with torch.autocast(device_type=device, enabled=False):
        common = {"scale": 1.0, "initial_state": initial, "output_final_state": True}
        if g is None:
            op = found.recurrent_delta if recurrent else found.chunk_delta
            out, final = op(qf, kf, vf, beta=beta, **common)
        elif recurrent:
            out, final = found.recurrent_gated(qf, kf, vf, g=g, beta=beta, **common)
        else:
            out, final = found.chunk_gated(qf, kf, vf, g=g, beta=beta, **common)
    weights = weights_from_fla(final).to(work)
    return out.transpose(1, 2).to(q.dtype), state.closed(weights)


def cu_seqlens(doc_start: torch.Tensor) -> torch.Tensor:
    """FLA's ``cu_seqlens`` for a (B, T) packed batch flattened to one row of B * T tokens:
    every row's first token and each marked document start open a sequence (a row's leading
    partial document is a document too, as in ``data.documents``), then the total."""
    batch, seq = doc_start.shape
    starts = doc_start.clone()
    starts[:, 0] = True
    offsets = starts.reshape(-1).nonzero().squeeze(1)
    return torch.cat([offsets, offsets.new_tensor([batch * seq])])


def fla_documents(
    found: FLAKernels,
    rule: MemoryRule,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    doc_start: torch.Tensor,
    carried: tuple[MemoryState, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, MemoryState]:
    """Packed documents through FLA's chunk kernels with ``cu_seqlens``: the (B, T) rows laid end
    to end as one sequence of B * T tokens, every document from the initial state, no padding
    (FLA's variable-length form).  Reads (B, H, T, d_v) and the closed state after each row's
    last document, as ``paths.per_token_documents`` returns them.  ``carried``: a state and
    (B,) bool, the rows whose first sequence (their leading document) starts from that state
    (``data.carry_state``); FLA takes an initial state per sequence."""
    batch, heads, seq, _ = q.shape
    work = torch.promote_types(q.dtype, torch.float32)
    device = q.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype
    qf, kf, vf, beta, g = fla_inputs(rule, q, k, v, gates)
    # [B, T, H, d] -> [1, B * T, H, d]: FLA's variable-length batches are one row
    qf, kf, vf, beta = (
        x.reshape(1, batch * seq, *x.shape[2:]).to(dtype).contiguous() for x in (qf, kf, vf, beta)
    )
    if g is None and dtype not in HALF:  # chunk_delta_rule refuses float32: the gated rule at g = 0
        g = torch.zeros(beta.shape, dtype=work, device=beta.device)
    elif g is not None:
        g = g.reshape(1, batch * seq, heads).to(work).contiguous()
    bounds = cu_seqlens(doc_start)
    documents = bounds.numel() - 1
    state_dtype = torch.promote_types(dtype, torch.float32)
    initial = fla_state(rule.initial_state(1).weights["w"]).to(state_dtype)
    initial = initial.expand(documents, *initial.shape[1:]).contiguous()  # [N, H, K, V]
    if carried is not None:  # each row's first sequence: the carried state where the row continues
        state, continues = carried
        first = torch.searchsorted(bounds, torch.arange(batch, device=bounds.device) * seq)
        start = fla_state(state.weights["w"]).to(state_dtype)
        initial = initial.index_put(
            (first,), torch.where(continues[:, None, None, None], start, initial[first])
        )
    common = {"scale": 1.0, "initial_state": initial, "output_final_state": True, "cu_seqlens": bounds}
    with torch.autocast(device_type=device, enabled=False):
        if g is None:
            out, final = found.chunk_delta(qf, kf, vf, beta=beta, **common)
        else:
            out, final = found.chunk_gated(qf, kf, vf, g=g, beta=beta, **common)
    # the sequence that holds each row's last token ends that row's state
    last = (
        torch.searchsorted(bounds, torch.arange(1, batch + 1, device=bounds.device) * seq - 1, right=True) - 1
    )
    weights = weights_from_fla(final[last]).to(work)
    y = out.reshape(batch, seq, heads, -1).transpose(1, 2).to(q.dtype)
    return y, rule.initial_state(batch).closed(weights)
