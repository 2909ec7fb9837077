"""The chunked path with per-token inner steps: exact at any chunk size, chunk-parallel.

Per-token semantics (DeltaNet, Gated DeltaNet): every token's gradient is taken at the
state the previous token left.  For a matrix memory M(x) = W x, an l2 or dot bias
(dl/dpred = s pred + b_t: s = 1, b = -v for l2; s = 0, b = -v for dot) and gradient
descent, one token is

    delta_t = s g_t W_{t-1} k_t + b_t             (the error at the gradient point g_t W_{t-1})
    W_t     = diag(alpha_t) W_{t-1} - diag(beta_t) delta_t k_t^T,    y_t = W_t q_t

with g_t = 1 (``gradient_at = "previous"``) or alpha_t (``"decayed"``: the gated delta rule
S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, arXiv 2412.06464 eq. 10),
beta_t = theta_t (divided by ||k_t||^2 when gd is ``normalized``), and alpha_t, beta_t one
per head or one per value channel (a row of W).  Each row of W follows its own scalar
recurrence, affine in the state.

Inside a chunk of L tokens from W_0, with A_i = sum_{s<=i} log alpha_s and G_i = A_i
(decayed) or A_{i-1} (previous), unrolling gives (the UT / WY form of Yang et al.,
arXiv 2406.06484, per row):

    delta_i = s e^{G_i} W_0 k_i + b_i - s sum_{j<i} e^{G_i - A_j} beta_j (k_i . k_j) delta_j
    =>  (I + T) delta = s e^{G} (K W_0^T) + b,   T_ij = s e^{G_i - A_j} beta_j k_i . k_j  (j < i)

so with one triangular solve per chunk (all chunks at once, independent of the state)
``delta = Wk W_0^T + U`` where ``[Wk | U] = (I + T)^-1 [s e^G K | b]``.  Only the (d x d)
step from one chunk's W_0 to the next is sequential:

    W_L = diag(e^{A_L}) W_0 - (delta o beta e^{A_L - A})^T K
    y_i = e^{A_i} W_0 q_i - sum_{j<=i} e^{A_i - A_j} beta_j (q_i . k_j) delta_j

and all reads are then batched.  Backward is autograd through these ops (the solve
included).  A length that is not a multiple of the chunk is zero-padded at the end: a
padded token has k = 0 and beta = 0, the identity step.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..parts import AttentionalBias, Gates, LearningAlgorithm, MemoryArchitecture, Retention
from ..rule import MemoryRule
from ..state import MemoryState

INNER_STEPS = ("mini_batch", "per_token")


def per_token_problem(
    arch: MemoryArchitecture,
    bias: AttentionalBias,
    retention: Retention,
    algorithm: LearningAlgorithm,
) -> str | None:
    """Why these parts have no exact chunk-parallel per-token form (None: they have one).

    The per-token step must be affine in the state with a rank-one correction: a matrix
    memory, a bias whose gradient is affine in the prediction, one source per step, gd.
    """
    if not arch.linear_map:
        return f"memory {_name(arch)} is not a single matrix: its per-token step is not affine in the state"
    if bias.gradient_slope is None:
        return f"bias {_name(bias)} has a gradient that is not affine in the prediction"
    if bias.window > 1:
        return f"bias {_name(bias)} sums {bias.window} tokens' gradients per step (the Omega window)"
    if retention.nonlinear or retention.needs_decayed_update:
        return f"retention {_name(retention)} changes the state by a non-linear step"
    if algorithm.nonlinear:
        return f"algorithm {_name(algorithm)} changes the state by a non-linear step"
    if algorithm.momentum:
        return f"algorithm {_name(algorithm)} carries momentum (not supported per token yet)"
    return None


def supports(rule: MemoryRule) -> bool:
    return per_token_problem(rule.arch, rule.bias, rule.retention, rule.algorithm) is None


def _name(module: nn.Module) -> str:
    return repr(getattr(module, "component_name", type(module).__name__))


def chunked_per_token(
    rule: MemoryRule,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    state: MemoryState,
    chunk_size: int,
) -> tuple[torch.Tensor, MemoryState]:
    """q, k (B, H, T, d_k), v (B, H, T, d_v): reads (B, H, T, d_v) and the state after T tokens.

    ``state`` must be closed (offset 0), as every per-token state is: the recurrent path
    with per-token steps closes its one-token chunk after every token.
    """
    problem = per_token_problem(rule.arch, rule.bias, rule.retention, rule.algorithm)
    if problem is not None:
        raise ValueError(f"inner_steps = 'per_token' at chunk_size {chunk_size}: {problem}")
    if state.offset:
        raise ValueError(
            f"inner_steps = 'per_token': the state is {state.offset} tokens into a mini-batch chunk; "
            "continue it with inner_steps = 'mini_batch'"
        )
    work = torch.promote_types(q.dtype, torch.float32)
    bias_gates = {name: gates[name] for name in rule.bias_gate_names()}
    theta = rule.algorithm.lr(gates).to(work)
    offset = rule.bias.gradient_offset(v, bias_gates).to(work).expand_as(v)
    log_alpha = rule.retention.log_alpha(gates)
    keys = k.to(work)
    if rule.algorithm.normalized:  # normalised LMS: as MemoryRule.factors divides each gradient
        inv_energy = 1.0 / keys.pow(2).sum(-1).clamp_min(1e-6)
        theta = theta * (inv_energy.unsqueeze(-1) if theta.dim() == 4 else inv_energy)
    if log_alpha is None:  # alpha = 1
        log_alpha = torch.zeros(q.shape[:3], dtype=work, device=q.device)
    with torch.autocast(device_type=q.device.type, enabled=False):
        y, weights = per_token_chunks(
            q.to(work),
            keys,
            offset,
            theta,
            log_alpha.to(work),
            state.weights["w"].to(work),
            rule.bias.gradient_slope,
            rule.retention.gradient_at_decayed,
            chunk_size,
        )
    state = dataclasses.replace(
        state,
        start={"w": weights},
        weights={"w": weights},
        offset=0,
        log_decay=state.log_decay.new_zeros(state.log_decay.shape),
        lr_sum=state.lr_sum.new_zeros(state.lr_sum.shape),
    )
    return y.to(q.dtype), state


def _rates(x: torch.Tensor, seq: int) -> torch.Tensor:
    """(B, H, T) -> (B, H, T, 1); (B, H, T, 1) or (B, H, T, d_v) kept: a value per row of W."""
    return x.unsqueeze(-1) if x.dim() == 3 else x.expand(*x.shape[:2], seq, x.shape[-1])


def _fold(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, H, T, ...) zero-padded to n * chunk tokens -> (B, H, n, chunk, ...)."""
    pad = -x.shape[2] % chunk
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:2], pad, *x.shape[3:])], dim=2)
    return x.unflatten(2, (x.shape[2] // chunk, chunk))


def _pair_decay(rows: torch.Tensor, cols: torch.Tensor, diagonal: int) -> torch.Tensor:
    """exp(rows_i - cols_j) where j <= i + diagonal (``tril(diagonal)``), else 0: (..., L) -> (..., L, L).

    Exponents outside the triangle are set to 0 before exp (they may be large and positive)
    and the exponent is clamped above the smallest normal's log (subnormals are slow on CPU).
    """
    length = rows.shape[-1]
    mask = torch.ones(length, length, dtype=torch.bool, device=rows.device).tril(diagonal)
    exponent = rows.unsqueeze(-1) - cols.unsqueeze(-2)
    floor = math.log(torch.finfo(exponent.dtype).tiny) + 1.0
    return torch.exp(exponent.masked_fill(~mask, 0.0).clamp_min(floor)).masked_fill(~mask, 0.0)


def per_token_chunks(
    q: torch.Tensor,
    k: torch.Tensor,
    offset: torch.Tensor,
    beta: torch.Tensor,
    log_alpha: torch.Tensor,
    w0: torch.Tensor,
    slope: float,
    decayed: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token recurrence of the module docstring, chunk-parallel (UT form).

    q, k (B, H, T, d_k); offset b (B, H, T, d_v); beta and log_alpha (B, H, T) per head or
    (B, H, T, d_v) per row of W; w0 (B, H, d_v, d_k); slope s; ``decayed``: the gradient at
    alpha_t W_{t-1}.  Returns y (B, H, T, d_v) and W after the last token.
    """
    batch, heads, seq, d_key = q.shape
    d_value = offset.shape[-1]
    chunk = min(chunk_size, seq)
    rows = beta.dim() == 4 or log_alpha.dim() == 4  # a rate per row of W: one system per row
    qc, kc, bc = _fold(q, chunk), _fold(k, chunk), _fold(offset, chunk)  # (B, H, n, L, d)
    # rates with the rows first: (B, H, n, C, L), C = 1 (per head) or d_v
    beta_c = _fold(_rates(beta, seq), chunk).transpose(-1, -2)
    log_alpha_c = _fold(_rates(log_alpha, seq), chunk).transpose(-1, -2)
    cum = torch.cumsum(log_alpha_c, dim=-1)  # A_i
    grad_point = cum if decayed else cum - log_alpha_c  # G_i
    n = qc.shape[2]

    # the reads' in-chunk weights P_ij = e^{A_i - A_j} beta_j (q_i . k_j), j <= i
    scores = _pair_decay(cum, cum, 0) * beta_c.unsqueeze(-2) * (qc @ kc.transpose(-1, -2)).unsqueeze(-3)
    end_weight = beta_c * torch.exp(cum[..., -1:] - cum)  # beta_j e^{A_L - A_j}, (B, H, n, C, L)
    end_decay = torch.exp(cum[..., -1])  # e^{A_L}, (B, H, n, C)

    # delta = Wk W_0^T + U: [Wk | U] = (I + T)^-1 [s e^G K | b], every chunk at once
    if slope:
        kk = (kc @ kc.transpose(-1, -2)).unsqueeze(-3)
        strict = slope * _pair_decay(grad_point, cum, -1) * beta_c.unsqueeze(-2) * kk  # T
        eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
        system = strict + eye
        scaled_keys = slope * torch.exp(grad_point).unsqueeze(-1) * kc.unsqueeze(-3)  # (B, H, n, C, L, d_k)
        if rows:  # one system per row: its own right-hand column of b
            system = system.expand(batch, heads, n, d_value, chunk, chunk)
            rhs = torch.cat(
                [scaled_keys.expand(-1, -1, -1, d_value, -1, -1), bc.transpose(-1, -2).unsqueeze(-1)], dim=-1
            )
        else:
            rhs = torch.cat([scaled_keys.squeeze(-3), bc], dim=-1)
            system = system.squeeze(-3)
        solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        wk, u = solved[..., :d_key], solved[..., d_key:]
        # rows first: u (B, H, n, d_v, L)
        u = u.squeeze(-1) if rows else u.transpose(-1, -2)
    else:  # no state in the error (dot bias): delta = b
        wk, u = None, bc.transpose(-1, -2)

    # the chunk recurrence: delta (d_v, L) and the next W_0, the only sequential part
    starts, deltas = [], []
    weights = w0
    for c in range(n):
        starts.append(weights)
        delta = u[:, :, c]
        if wk is not None:
            if rows:  # delta[r, i] = Wk[r, i] . W_0[r]
                delta = delta + (wk[:, :, c] @ weights.unsqueeze(-1)).squeeze(-1)
            else:  # delta^T = W_0 Wk^T
                delta = delta + weights @ wk[:, :, c].transpose(-1, -2)
        deltas.append(delta)
        decay = end_decay[:, :, c].unsqueeze(-1)  # (B, H, C, 1): scales the rows of W
        weights = decay * weights - (delta * end_weight[:, :, c]) @ kc[:, :, c]
    start = torch.stack(starts, dim=2)  # (B, H, n, d_v, d_k)
    delta = torch.stack(deltas, dim=2)  # (B, H, n, d_v, L)

    # all reads at once: y_i = e^{A_i} W_0 q_i - sum_j P_ij delta_j
    inter = (qc @ start.transpose(-1, -2)) * torch.exp(cum).transpose(-1, -2)  # (B, H, n, L, d_v)
    if rows:  # P per row: (B, H, n, C, L, L) @ (B, H, n, d_v, L, 1)
        intra = (scores @ delta.unsqueeze(-1)).squeeze(-1).transpose(-1, -2)
    else:
        intra = scores.squeeze(-3) @ delta.transpose(-1, -2)
    y = (inter - intra).flatten(2, 3)[:, :, :seq]
    return y, weights
