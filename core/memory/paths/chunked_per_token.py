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

import math
from collections.abc import Callable

import torch
from torch import nn

from ..rule.axes import AttentionalBias, LearningAlgorithm, MemoryArchitecture, Retention
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState
from .tokens import Result, Tokens


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
    if algorithm.stateful:
        return f"algorithm {_name(algorithm)} carries state of its own (an arbitrary per-token optimizer)"
    return None


def inner_steps_problem(
    parts: tuple[MemoryArchitecture, AttentionalBias, Retention, LearningAlgorithm],
    inner_steps: str,
    chunk_size: int,
) -> str | None:
    """Why ``parts`` cannot run ``inner_steps`` at ``chunk_size`` (None: they can), as a sentence.

    Per-token steps at chunk 1 are the mini-batch steps at chunk 1, so every rule has them
    there; at larger chunks only rules with an exact chunk-parallel form do."""
    if inner_steps != "per_token" or chunk_size == 1 or (reason := per_token_problem(*parts)) is None:
        return None
    return (
        f"inner_steps = 'per_token' has no exact chunk-parallel form at chunk_size {chunk_size}: {reason} "
        "(use chunk_size = 1 or inner_steps = 'mini_batch')"
    )


def supports(rule: MemoryRule) -> bool:
    return per_token_problem(*rule.parts) is None


def _name(module: nn.Module) -> str:
    return repr(getattr(module, "component_name", type(module).__name__))


def chunked_per_token(
    rule: MemoryRule,
    tokens: Tokens,
    state: MemoryState,
    chunk_size: int,
    restart: torch.Tensor | None = None,
    reset: MemoryState | None = None,
    last_token: torch.Tensor | None = None,
) -> Result:
    """q, k (B, H, T, d_k), v (B, H, T, d_v): reads (B, H, T, d_v) and the state after T tokens.

    ``restart`` (B, chunks) bool: those chunks start again from ``reset`` (default ``state``):
    documents laid out on the chunk grid, ``paths.per_token_documents``, whose rows may begin
    from a carried ``state`` and restart from the initial one.  ``last_token`` (B,) long: the
    state returned is each row's after that token (the padded tokens after it move W by S).
    ``state`` must be closed (offset 0), as every per-token state is: the recurrent path
    with per-token steps closes its one-token chunk after every token.
    """
    q, k, v, gates = tokens
    if (problem := inner_steps_problem(rule.parts, "per_token", chunk_size)) is not None:
        raise ValueError(problem)
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
    log_eta = rule.algorithm.log_eta(gates) if rule.algorithm.momentum else None
    with torch.autocast(device_type=q.device.type, enabled=False):
        y, weights, surprise = per_token_chunks(
            q.to(work),
            keys,
            offset,
            theta,
            log_alpha.to(work) if log_alpha is not None else None,
            state.weights["w"].to(work),
            rule.bias.gradient_slope,
            rule.retention.gradient_at_decayed,
            chunk_size,
            log_eta.to(work) if log_eta is not None else None,
            state.momentum["w"].to(work) if log_eta is not None else None,
            restart,
            _restart_state(reset, work, log_eta is not None),
            last_token,
        )
    return y.to(q.dtype), state.closed(weights, surprise)


def _restart_state(
    reset: MemoryState | None, work: torch.dtype, momentum: bool
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``reset``'s W (and S, with momentum) in the working precision, or None (restart from W_0)."""
    if reset is None:
        return None
    return reset.weights["w"].to(work), reset.momentum["w"].to(work) if momentum else None


def _rates(x: torch.Tensor, seq: int) -> torch.Tensor:
    """(B, H, T) -> (B, H, T, 1); (B, H, T, 1) or (B, H, T, d_v) kept: a value per row of W."""
    return x.unsqueeze(-1) if x.dim() == 3 else x.expand(*x.shape[:2], seq, x.shape[-1])


def _fold(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, H, T, ...) zero-padded to n * chunk tokens -> (B, H, n, chunk, ...)."""
    pad = -x.shape[2] % chunk
    if torch.compiler.is_compiling():  # one op, no tensor of ``pad`` tokens: no guard on the remainder
        x = torch.nn.functional.pad(x, [0, 0] * (x.dim() - 3) + [0, pad])
    elif pad:
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
    log_alpha: torch.Tensor | None,
    w0: torch.Tensor,
    slope: float,
    decayed: bool,
    chunk_size: int,
    log_eta: torch.Tensor | None = None,
    s0: torch.Tensor | None = None,
    restart: torch.Tensor | None = None,
    reset: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    last_token: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The per-token recurrence of the module docstring, chunk-parallel (UT form).

    q, k (B, H, T, d_k); offset b (B, H, T, d_v); beta, log_alpha and log_eta (B, H, T) per
    head or (B, H, T, d_v) per row of W (log_alpha None: alpha = 1); w0 and the momentum s0 (B, H, d_v, d_k); slope s;
    ``decayed``: the gradient at alpha_t W_{t-1}.  Returns y (B, H, T, d_v), W and S after
    the last token (S None without momentum).  ``restart`` (B, chunks) bool: those chunks begin
    again from ``reset`` (W, S), default (w0, s0).  ``last_token`` (B,): W and S are returned
    after that token of each row instead of after the last (with momentum a zero-padded token
    is no identity step: S keeps moving W).
    """
    batch, heads, seq, d_key = q.shape
    d_value = offset.shape[-1]
    chunk = min(chunk_size, seq)
    momentum = log_eta is not None
    rows = any(x is not None and x.dim() == 4 for x in (beta, log_alpha, log_eta))  # one system per row
    qc, kc, bc = _fold(q, chunk), _fold(k, chunk), _fold(offset, chunk)  # (B, H, n, L, d)

    def rates(x: torch.Tensor) -> torch.Tensor:  # rows first: (B, H, n, C, L), C = 1 or d_v
        return _fold(_rates(x, seq), chunk).transpose(-1, -2)

    decays = log_alpha is not None
    if not decays:  # alpha = 1
        log_alpha = torch.zeros_like(q[..., 0])
    beta_c, log_alpha_c = rates(beta), rates(log_alpha)
    cum = torch.cumsum(log_alpha_c, dim=-1)  # A_i
    # c_ij: what token j's update contributes to W_i (j <= i); sigma_i: S_0's share of W_i
    if decays:
        decay = _pair_decay(cum, cum, 0)
    else:
        decay = torch.ones(chunk, chunk, dtype=q.dtype, device=q.device).tril()  # broadcasts
    if momentum:
        cum_eta = torch.cumsum(rates(log_eta), dim=-1)  # E_i
        coef = decay @ _pair_decay(cum_eta, cum_eta, 0)  # sum_m e^{A_i - A_m} e^{E_m - E_j}
        carry = (decay @ torch.exp(cum_eta).unsqueeze(-1)).squeeze(-1)
    else:
        coef, carry, cum_eta = decay, None, None
    rated = coef * beta_c.unsqueeze(-2)  # c_ij beta_j
    reads = rated * (qc @ kc.transpose(-1, -2)).unsqueeze(-3)  # P_ij, (.., C, L, L)
    n = qc.shape[2]
    # the chunk-end row L: the last row, or the last real token's in a zero-padded last chunk
    # (padded tokens leave W alone, but with momentum S would keep moving it)
    last = (seq - 1) % chunk

    def end_terms(sel: slice, row: int) -> list[tuple[torch.Tensor, ...]]:
        """Per chunk of ``sel``: e^{A_L}, beta_j c_Lj and, with momentum, sigma_L, e^{E_L},
        beta_j e^{E_L - E_j}, for the end row ``row``."""
        terms = [torch.exp(cum[:, :, sel, :, row, None]), rated[:, :, sel, :, row]]
        if momentum:
            eta = cum_eta[:, :, sel]
            tail = beta_c[:, :, sel] * torch.exp(eta[..., row, None] - eta).masked_fill(
                torch.arange(chunk, device=q.device) > row, 0.0
            )
            terms += [carry[:, :, sel, :, row, None], torch.exp(eta[..., row, None]), tail]
        # unbound once: indexing chunk c in the loop would make backward zero-fill a
        # full-size gradient per chunk (quadratic in the number of chunks)
        return list(zip(*(t.unbind(2) for t in terms), strict=True))

    def end_rows() -> list[torch.Tensor]:
        """``end_terms`` of every chunk, stacked on dim 2, for ``_scan_chunks``: the end row is
        picked per chunk by a gather, so a symbolic ``last`` puts no guard on the length."""
        row = torch.where(torch.arange(n, device=q.device) == n - 1, last, chunk - 1)

        def at_row(x: torch.Tensor, dim: int) -> torch.Tensor:  # x's entry ``row`` of ``dim`` per chunk
            shape = [1] * x.dim()
            shape[2] = n
            size = list(x.shape)
            size[dim] = 1
            return x.gather(dim, row.view(shape).expand(size))

        cum_end = at_row(cum, -1)  # (B, H, n, C, 1)
        terms = [torch.exp(cum_end), at_row(rated, -2).squeeze(-2)]
        if momentum:
            eta_end = at_row(cum_eta, -1)
            after = torch.arange(chunk, device=q.device) > row[:, None, None]  # (n, 1, L)
            tail = beta_c * torch.exp(eta_end - cum_eta).masked_fill(after, 0.0)
            terms += [at_row(carry, -1), torch.exp(eta_end), tail]
        return terms

    # delta = Wk W_0^T + Sk S_0^T + U, [Wk | Sk | U] = (I + T)^-1 [s e^G K | s g sigma' K | b] with
    # the gradient point g_i W_{i-1} of token i: W_{i-1} is row i - 1 of (c, sigma), e^{A_{i-1}}
    if slope:

        def previous(x: torch.Tensor) -> torch.Tensor:  # row i -> row i + 1 along the token dim -2
            return torch.cat([torch.zeros_like(x[..., :1, :]), x[..., :-1, :]], dim=-2)

        point = torch.exp(log_alpha_c) if decayed else torch.ones_like(log_alpha_c)  # g_i
        kk = (kc @ kc.transpose(-1, -2)).unsqueeze(-3)
        if (decayed or not decays) and not momentum:  # a_i c_{i-1,j} = c_ij below the diagonal
            system = rated * kk
        elif decayed:
            system = point.unsqueeze(-1) * previous(rated) * kk
        else:
            system = previous(rated) * kk
        # T, and I + T as the solve reads it: unitriangular ignores the diagonal
        system = system if slope == 1 else slope * system
        start_share = point * torch.exp(previous(cum.unsqueeze(-1)).squeeze(-1))  # g_i e^{A_{i-1}}
        shares = [start_share]
        if momentum:
            shares.append(point * previous(carry.unsqueeze(-1)).squeeze(-1))  # g_i sigma_{i-1}
        keys = kc.unsqueeze(-3)
        width = d_value if rows else 1
        columns = [
            (slope * share.unsqueeze(-1) * keys).expand(batch, heads, n, width, chunk, d_key)
            for share in shares
        ]
        if rows:  # one system per row, with its own right-hand column of b
            system = system.expand(batch, heads, n, d_value, chunk, chunk)
            rhs = torch.cat([*columns, bc.transpose(-1, -2).unsqueeze(-1)], dim=-1)
        else:
            system = system.squeeze(-3)
            rhs = torch.cat([*(c.squeeze(-3) for c in columns), bc], dim=-1)
        solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        parts = solved.split([d_key] * len(columns) + [solved.shape[-1] - d_key * len(columns)], dim=-1)
        projections, u = parts[:-1], parts[-1]
        u = u.squeeze(-1) if rows else u.transpose(-1, -2)  # rows first: (B, H, n, d_v, L)
    else:  # no state in the error (dot bias): delta = b
        projections, u = (), bc.transpose(-1, -2)

    def times(projection: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """delta's share of a state: rows, delta[r, i] = P[r, i] . X[r]; per head delta^T = X P^T."""
        if rows:
            return (projection @ state.unsqueeze(-1)).squeeze(-1)
        return state @ projection.transpose(-1, -2)

    # the chunk recurrence: delta (d_v, L) and the next W_0 (and S_0), the only sequential part
    if torch.compiler.is_compiling():  # one graph for every number of chunks
        weights, surprise, starts, momenta, delta = _scan_chunks(
            (u, kc, *projections), end_rows(), w0, s0, restart, momentum, times, reset
        )
    else:
        weights, surprise, starts, momenta, delta = _loop_chunks(
            (u, kc, *projections),
            end_terms(slice(0, n - 1), chunk - 1) + end_terms(slice(n - 1, n), last),
            w0,
            s0,
            restart,
            momentum,
            times,
            reset,
        )

    if momentum and last_token is not None:  # the state at each row's own last token
        weights, surprise = _state_at(
            last_token, chunk, starts, momenta, delta, kc, cum, rated, carry, cum_eta, beta_c, times
        )

    # all reads at once: y_i = e^{A_i} W_0 q_i + sigma_i S_0 q_i - sum_j P_ij delta_j
    y = (qc @ starts.transpose(-1, -2)) * torch.exp(cum).transpose(-1, -2)
    if momentum:
        y = y + (qc @ momenta.transpose(-1, -2)) * carry.transpose(-1, -2)
    if rows:  # P per row: (B, H, n, C, L, L) @ (B, H, n, d_v, L, 1)
        y = y - (reads @ delta.unsqueeze(-1)).squeeze(-1).transpose(-1, -2)
    else:
        y = y - reads.squeeze(-3) @ delta.transpose(-1, -2)
    y = y.flatten(2, 3)
    if torch.compiler.is_compiling():  # a gather, not a view of the padded tensor (whose
        # strides would put a guard on whether padding was cut off): one graph for every length
        return y.index_select(2, torch.arange(seq, device=y.device)), weights, surprise
    return y[:, :, :seq], weights, surprise


def _state_at(
    token: torch.Tensor,
    chunk: int,
    starts: torch.Tensor,
    momenta: torch.Tensor,
    delta: torch.Tensor,
    kc: torch.Tensor,
    cum: torch.Tensor,
    rated: torch.Tensor,
    carry: torch.Tensor,
    cum_eta: torch.Tensor,
    beta_c: torch.Tensor,
    times: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W and S after token ``token[b]`` of each row b: its chunk's step from that chunk's W_0 and
    S_0 with the end terms of ``end_terms`` taken at the token's row of the chunk."""
    b = torch.arange(token.shape[0], device=token.device)
    c, r = token // chunk, token % chunk
    eta = cum_eta[b, :, c]  # (B, H, C, L)
    after = torch.arange(chunk, device=token.device) > r[:, None, None, None]
    ends = [
        torch.exp(cum[b, :, c, :, r]).unsqueeze(-1),
        rated[b, :, c, :, r],
        carry[b, :, c, :, r].unsqueeze(-1),
        torch.exp(cum_eta[b, :, c, :, r]).unsqueeze(-1),
        (beta_c[b, :, c] * torch.exp(cum_eta[b, :, c, :, r].unsqueeze(-1) - eta)).masked_fill(after, 0.0),
    ]
    weights, surprise, _ = _chunk_step(
        starts[b, :, c], momenta[b, :, c], [delta[b, :, c], kc[b, :, c]], ends, True, times
    )
    return weights, surprise


def _chunk_step(
    weights: torch.Tensor,
    surprise: torch.Tensor | None,
    inputs: list[torch.Tensor],
    end: list[torch.Tensor],
    momentum: bool,
    times: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One chunk from W_0 (and S_0): the state after it and its delta (rows first, (d_v, L))."""
    delta, key, *projection = inputs
    if projection:
        delta = delta + times(projection[0], weights)
        if momentum:
            delta = delta + times(projection[1], surprise)
    new_weights = end[0] * weights - (delta * end[1]) @ key
    if momentum:  # W_L = e^{A_L} W_0 + sigma_L S_0 - ...;  S_L = e^{E_L} S_0 - ...
        new_weights = new_weights + end[2] * surprise
        surprise = end[3] * surprise - (delta * end[4]) @ key
    return new_weights, surprise, delta


def _loop_chunks(
    per_chunk_inputs: tuple[torch.Tensor, ...],
    ends: list[tuple[torch.Tensor, ...]],
    w0: torch.Tensor,
    s0: torch.Tensor | None,
    restart: torch.Tensor | None,
    momentum: bool,
    times: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reset: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The chunk recurrence as a Python loop (eagerly): the state after the last chunk, then
    W_0, S_0 and delta of every chunk, stacked on dim 2."""
    starts, momenta, deltas = [], [], []
    weights, surprise = w0, s0
    w_reset, s_reset = reset if reset is not None else (w0, s0)
    per_chunk = [x.unbind(2) for x in per_chunk_inputs]
    restarts = restart[:, None, :, None, None].unbind(2) if restart is not None else None  # (B, 1, 1, 1)
    for c in range(len(ends)):
        if restarts is not None:  # this row's chunk c opens a document: back to W_0 (and S_0)
            weights = torch.where(restarts[c], w_reset, weights)
            if momentum:
                surprise = torch.where(restarts[c], s_reset, surprise)
        starts.append(weights)
        if momentum:
            momenta.append(surprise)
        weights, surprise, delta = _chunk_step(
            weights, surprise, [x[c] for x in per_chunk], list(ends[c]), momentum, times
        )
        deltas.append(delta)
    stacked_momenta = torch.stack(momenta, dim=2) if momentum else None
    return weights, surprise, torch.stack(starts, dim=2), stacked_momenta, torch.stack(deltas, dim=2)


def _scan_chunks(
    per_chunk_inputs: tuple[torch.Tensor, ...],
    ends: list[torch.Tensor],
    w0: torch.Tensor,
    s0: torch.Tensor | None,
    restart: torch.Tensor | None,
    momentum: bool,
    times: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reset: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``_loop_chunks`` under torch.compile, through ``scan``: the number of chunks is the
    scanned dimension's size, so one graph serves every sequence length (a Python loop
    would be unrolled once per number of chunks).  ``ends`` are stacked over chunks."""
    from torch._higher_order_ops.scan import scan

    count = len(per_chunk_inputs)
    # chunk-major copies: scan refuses inputs that alias one another (u and the projections
    # are slices of one solve)
    xs = [x.movedim(2, 0).clone(memory_format=torch.contiguous_format) for x in (*per_chunk_inputs, *ends)]
    if restart is not None:  # (n, B, 1, 1, 1), and the starting state once per chunk (copies, as above)
        xs.append(restart[:, None, :, None, None].movedim(2, 0).contiguous())
        w_reset, s_reset = reset if reset is not None else (w0, s0)
        xs += [
            x.expand(xs[0].shape[0], *x.shape).contiguous()
            for x in (w_reset, *([s_reset] if momentum else []))
        ]

    square = w0.shape[-2:]

    def flat(x: torch.Tensor) -> torch.Tensor:
        """A state as a (B, H, d_v * d_k) copy.  Every output a copy: scan refuses a body whose
        outputs may alias its inputs.  Flat: with (d_v, d_k) carries inductor laid out a
        gradient carry of scan's backward transposed and refused it against the body's output
        (torch 2.13, static shapes too); a flat carry has one layout."""
        return x.flatten(-2).clone(memory_format=torch.contiguous_format)

    def body(carry: list[torch.Tensor], chunk: list[torch.Tensor]):
        weights = carry[0].unflatten(-1, square)
        surprise = carry[1].unflatten(-1, square) if momentum else None
        inputs, end, rest = chunk[:count], chunk[count : count + len(ends)], chunk[count + len(ends) :]
        if rest:
            weights = torch.where(rest[0], rest[1], weights)
            if momentum:
                surprise = torch.where(rest[0], rest[2], surprise)
        weights_out, surprise_out, delta = _chunk_step(weights, surprise, inputs, end, momentum, times)
        starts = [flat(weights), *([flat(surprise)] if momentum else [])]
        carry_out = [flat(weights_out), *([flat(surprise_out)] if momentum else [])]
        return carry_out, [*starts, delta.clone(memory_format=torch.contiguous_format)]

    init = [flat(w0), *([flat(s0)] if momentum else [])]
    final, outputs = scan(body, init, xs)
    final = [x.unflatten(-1, square) for x in final]
    outputs = [x.movedim(0, 2) for x in outputs]
    outputs = [x.unflatten(-1, square) for x in outputs[:-1]] + [outputs[-1]]
    if momentum:
        return final[0], final[1], outputs[0], outputs[1], outputs[2]
    return final[0], None, outputs[0], None, outputs[1]
