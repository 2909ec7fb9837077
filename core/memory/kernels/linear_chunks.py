"""The batched chunked pass of a matrix memory as one autograd Function, with its backward by hand.

Forward (per chunk, batched over batch, heads and chunks; see ``paths.chunked_affine``):

    Dalpha = exp(A_i - A_s) (s <= i),  beta = exp(A),  A = cumsum(log alpha)
    M = -Deta diag(u),  K = Dalpha M,  sigma = Dalpha exp(E)      (momentum; E = cumsum(log eta))
    K = -Dalpha diag(u)                                           (no momentum)
    Abar = K o (q k^T),  q~ = beta q + c Abar k,  r = Abar b
    P = c k^T diag(row) k,  R = b^T diag(row) k    for row = K[L] (W) and M[L] (S)
    W' = beta_L W + sigma_L S + W P_W + R_W,  S' = eta_L S + W P_S + R_S
    y = r + q~ W^T + (sigma q) S^T
    y = q W^T                       (chunk-level reads: every token at its chunk's start W)

with u the learning rate per source (the normalised step folded in), b the bias's gradient
offset and c its slope.  Autograd through that graph spends most of its time on
elementwise gradient bookkeeping; the backward below makes each gradient with the same
few batched matmuls as the forward, and runs the chunk recurrence backwards once.
Tested against autograd through ``paths.chunked_affine``'s reference graph (float64).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .batched import matmul_add_
from .decay_matrix import decay_matrix


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over the last dimension of a * b."""
    return (a * b).sum(-1)


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1).cumsum(-1).flip(-1)


def end_terms(
    k: torch.Tensor,
    offset: torch.Tensor,
    rows: torch.Tensor,
    slope: float,
    grad_keys: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """P = c a-k^T diag(row) k (d x m d) and R = b^T diag(row) k (d_v x m d) for m chunk-end
    rows (..., L, m), in one matmul each; ``grad_keys`` (a k, the gradient point) defaults to k."""
    weighted = (k.unsqueeze(-2) * rows.unsqueeze(-1).to(k.dtype)).flatten(-2)  # [row_1 k | row_2 k]
    shifts = offset.transpose(-1, -2) @ weighted
    projectors = None
    if slope:
        projectors = (k if grad_keys is None else grad_keys).transpose(-1, -2) @ weighted
        if slope != 1:
            projectors = slope * projectors
    return projectors, shifts


def chunk_recurrence(
    weights: torch.Tensor,
    momentum: torch.Tensor | None,
    beta_end: list[torch.Tensor],
    carry_end: list[torch.Tensor] | None,
    eta_end: list[torch.Tensor] | None,
    shifts: list[tuple[torch.Tensor, ...]],
    projectors: list[tuple[torch.Tensor, ...]] | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """W' = beta_L W + sigma_L S + W P_W + R_W,  S' = eta_L S + W P_S + R_S, chunk after chunk.

    Per-chunk inputs come as lists (scalars (B, H, 1, 1), [R_W, R_S] and [P_W, P_S] pairs):
    unbound once, so that under autograd indexing in the loop does not zero-fill a full-size
    gradient per chunk.  Updates are fused and in place on tensors made here: the loop is
    latency-bound.  Returns the chunk-start states and the final W and S.
    """
    starts_w, starts_s = [], []
    for c, shift in enumerate(shifts):
        starts_w.append(weights)
        following = torch.addcmul(shift[0], beta_end[c], weights)
        if projectors is not None:
            following = matmul_add_(following, weights, projectors[c][0])
        if momentum is not None:
            starts_s.append(momentum)
            following.addcmul_(carry_end[c], momentum)
            momentum = torch.addcmul(shift[1], eta_end[c], momentum)
            if projectors is not None:
                momentum = matmul_add_(momentum, weights, projectors[c][1])
        weights = following
    return starts_w, starts_s, weights, momentum


def chunk_list(x: torch.Tensor, halves: int | None = None) -> list:
    """(B, H, n, ...) -> a list over the n chunks; with ``halves``, each split into pieces that wide."""
    pieces = x.unbind(2)
    return [p.split(halves, dim=-1) for p in pieces] if halves else list(pieces)


class LinearChunks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, offset, u, log_alpha, log_eta, w0, s0, slope, chunk_reads=False):
        momentum = log_eta is not None
        with torch.autocast(device_type=q.device.type, enabled=False):
            dtype, d_key = q.dtype, q.shape[-1]
            coef_dtype = torch.promote_types(u.dtype, torch.float32)
            state_dtype = torch.promote_types(w0.dtype, torch.float32)
            cum_alpha = torch.cumsum(log_alpha.to(coef_dtype), dim=-1)
            d_alpha = decay_matrix(cum_alpha)
            beta = torch.exp(cum_alpha)
            minus_u = (-u.to(coef_dtype)).unsqueeze(-2)
            if momentum:
                cum_eta = torch.cumsum(log_eta.to(coef_dtype), dim=-1)
                d_eta = decay_matrix(cum_eta)
                m = d_eta * minus_u
                coef = d_alpha @ m
                e = torch.exp(cum_eta)
                sigma = (d_alpha @ e.unsqueeze(-1)).squeeze(-1)
                rows = torch.stack([coef[..., -1, :], m[..., -1, :]], dim=-1)
            else:
                d_eta = m = e = sigma = None
                coef = d_alpha * minus_u
                rows = coef[..., -1, :].unsqueeze(-1)
            if chunk_reads:  # no intra-chunk term: q~ = q, no r, no S read
                qk = scores = y = None
                q_eff = q
            else:
                qk = q @ k.transpose(-1, -2)
                scores = coef.to(dtype) * qk
                q_eff = beta.unsqueeze(-1).to(dtype) * q
                if slope:
                    q_eff = matmul_add_(q_eff, scores, k, slope)
                y = scores @ offset
            projectors, shifts = end_terms(k, offset, rows, slope)

            # the chunk recurrence in (at least) fp32
            shifts = shifts.to(state_dtype)
            projectors = projectors.to(state_dtype) if projectors is not None else None
            starts_w, starts_s, weights, state_s = chunk_recurrence(
                w0.to(state_dtype),
                s0.to(state_dtype) if momentum else None,
                chunk_list(beta[..., -1, None, None].to(state_dtype)),
                chunk_list(sigma[..., -1, None, None].to(state_dtype)) if momentum else None,
                chunk_list(e[..., -1, None, None].to(state_dtype)) if momentum else None,
                chunk_list(shifts, d_key),
                chunk_list(projectors, d_key) if projectors is not None else None,
            )
            starts_w = torch.stack(starts_w, dim=2)
            starts_s = torch.stack(starts_s, dim=2) if momentum else None
            if chunk_reads:
                y = q @ starts_w.to(dtype).transpose(-1, -2)
            else:
                y = matmul_add_(y, q_eff, starts_w.to(dtype).transpose(-1, -2))
                if momentum:
                    y = matmul_add_(
                        y, sigma.unsqueeze(-1).to(dtype) * q, starts_s.to(dtype).transpose(-1, -2)
                    )

        ctx.slope, ctx.momentum, ctx.chunk_reads = slope, momentum, chunk_reads
        ctx.save_for_backward(
            q,
            k,
            offset,
            u,
            d_alpha,
            beta,
            d_eta,
            m,
            coef,
            e,
            sigma,
            qk,
            scores,
            q_eff,
            starts_w,
            starts_s,
            projectors,
        )
        # no momentum: an empty tensor, not None, in the S slot (dynamo cannot trace a Function
        # with a None output: it fell back to eager for the whole layer, and for every layer
        # sharing its code)
        return y, weights, state_s if momentum else weights.new_empty(0)

    @staticmethod
    @once_differentiable  # its in-place updates are not themselves differentiable
    def backward(ctx, grad_y, grad_w_end, grad_s_end):
        (
            q,
            k,
            offset,
            u,
            d_alpha,
            beta,
            d_eta,
            m,
            coef,
            e,
            sigma,
            qk,
            scores,
            q_eff,
            starts_w,
            starts_s,
            projectors,
        ) = ctx.saved_tensors
        slope, momentum, chunk_reads = ctx.slope, ctx.momentum, ctx.chunk_reads
        # every intermediate here is ours: updated in place where it dies, to allocate less
        with torch.autocast(device_type=q.device.type, enabled=False):
            dtype, d_key, n = q.dtype, q.shape[-1], q.shape[2]
            coef_dtype, state_dtype = coef.dtype, starts_w.dtype
            if grad_y is None:
                grad_y = torch.zeros(*q.shape[:-1], offset.shape[-1], dtype=dtype, device=q.device)
            grad_y = grad_y.to(dtype)
            state_shape = starts_w.shape[:2] + starts_w.shape[3:]
            g_w = grad_w_end.to(state_dtype) if grad_w_end is not None else starts_w.new_zeros(state_shape)
            g_s = None
            if momentum:
                g_s = (
                    grad_s_end.to(state_dtype) if grad_s_end is not None else starts_w.new_zeros(state_shape)
                )

            # the reads' share of each chunk's start-state gradient, then the recurrence backwards
            sigma_col = sigma.unsqueeze(-1).to(dtype) if momentum else None
            read_w = (grad_y.transpose(-1, -2) @ q_eff).to(state_dtype)
            read_s = None
            if momentum and not chunk_reads:
                read_s = (grad_y.transpose(-1, -2) @ (sigma_col * q)).to(state_dtype)
            beta_end = beta[..., -1].to(state_dtype)
            if momentum:
                sigma_end, eta_end = sigma[..., -1].to(state_dtype), e[..., -1].to(state_dtype)
            # [dL/dW | dL/dS] after each chunk c = [dL/dR_W | dL/dR_S], written in place as the
            # loop makes them (a stack and a cat afterwards cost three passes over cold memory);
            # the slice then meets [P_W | P_S] in one matmul
            grad_shift = starts_w.new_empty(
                *state_shape[:2], n, state_shape[2], (2 if momentum else 1) * d_key
            )
            for c in reversed(range(n)):
                end = grad_shift[:, :, c]
                end[..., :d_key].copy_(g_w)
                if momentum:
                    end[..., d_key:].copy_(g_s)
                previous_w = torch.addcmul(read_w[:, :, c], beta_end[:, :, c, None, None], g_w)
                if projectors is not None:
                    previous_w = matmul_add_(previous_w, end, projectors[:, :, c].transpose(-1, -2))
                if momentum and read_s is None:  # chunk-level reads never read S
                    g_s = (sigma_end[:, :, c, None, None] * g_w).addcmul_(eta_end[:, :, c, None, None], g_s)
                elif momentum:
                    g_s = torch.addcmul(read_s[:, :, c], sigma_end[:, :, c, None, None], g_w).addcmul_(
                        eta_end[:, :, c, None, None], g_s
                    )
                g_w = previous_w
            grad_w0, grad_s0 = g_w, g_s

            # the recurrence's scalars beta_L, sigma_L, eta_L
            g_beta = torch.zeros_like(beta)
            g_beta[..., -1] = (grad_shift[..., :d_key] * starts_w).sum((-1, -2)).to(coef_dtype)
            g_sigma = g_e = None
            if momentum:
                g_sigma = torch.zeros_like(sigma)
                g_sigma[..., -1] = (grad_shift[..., :d_key] * starts_s).sum((-1, -2)).to(coef_dtype)
                g_e = torch.zeros_like(e)
                g_e[..., -1] = (grad_shift[..., d_key:] * starts_s).sum((-1, -2)).to(coef_dtype)

            if chunk_reads:  # y = q W^T: only q and the chunk-start states see the reads
                grad_q = grad_y @ starts_w.to(dtype)
                grad_offset, grad_k = torch.zeros_like(offset), torch.zeros_like(k)
            else:  # reads: y = r + q~ W^T + (sigma q) S^T, with r = Abar b and q~ = beta q + c Abar k
                grad_q_eff = grad_y @ starts_w.to(dtype)
                g_beta += _rowdot(grad_q_eff, q).to(coef_dtype)
                grad_scores = grad_y @ offset.transpose(-1, -2)
                grad_offset = scores.transpose(-1, -2) @ grad_y
                if slope:
                    grad_scores = matmul_add_(grad_scores, grad_q_eff, k.transpose(-1, -2), slope)
                    grad_k = scores.transpose(-1, -2) @ grad_q_eff
                    if slope != 1:
                        grad_k.mul_(slope)
                else:
                    grad_k = torch.zeros_like(k)
                grad_q = grad_q_eff.mul_(beta.unsqueeze(-1).to(dtype))
                if momentum:
                    grad_sigma_q = grad_y @ starts_s.to(dtype)
                    g_sigma += _rowdot(grad_sigma_q, q).to(coef_dtype)
                    grad_q.addcmul_(grad_sigma_q, sigma_col)

            # chunk-end terms: [P | R] = [c k | b]^T [row_1 k | row_2 k] ("weighted")
            rows = torch.stack([coef[..., -1, :]] + ([m[..., -1, :]] if momentum else []), dim=-1).to(dtype)
            weighted = (k.unsqueeze(-2) * rows.unsqueeze(-1)).flatten(-2)
            grad_shift = grad_shift.to(dtype)
            grad_weighted = offset @ grad_shift
            grad_offset = matmul_add_(grad_offset, weighted, grad_shift.transpose(-1, -2))
            if projectors is not None:
                grad_projector = starts_w.transpose(-1, -2).to(dtype) @ grad_shift  # W^T g: (d x m d)
                if slope != 1:
                    grad_projector.mul_(slope)
                grad_weighted = matmul_add_(grad_weighted, k, grad_projector)
                grad_k = matmul_add_(grad_k, weighted, grad_projector.transpose(-1, -2))
            per_row = grad_weighted.unflatten(-1, (rows.shape[-1], d_key))  # (L, m, d)
            grad_rows = _rowdot(per_row, k.unsqueeze(-2)).to(coef_dtype)  # (L, m)
            grad_k += (per_row * rows.unsqueeze(-1)).sum(-2)

            # Abar = K o (q k^T) (no Abar with chunk-level reads: K is seen by its last rows only)
            if chunk_reads:
                grad_coef = torch.zeros_like(coef)
            else:
                grad_coef = (grad_scores * qk).to(coef_dtype)
                grad_qk = grad_scores.mul_(coef.to(dtype))
                grad_q = matmul_add_(grad_q, grad_qk, k)
                grad_k = matmul_add_(grad_k, grad_qk.transpose(-1, -2), q)
            grad_coef[..., -1, :] += grad_rows[..., 0]

            # the coefficients back to the rates (h = dL/dD o D is what reaches a decay's log)
            minus_u = (-u.to(coef_dtype)).unsqueeze(-2)
            if momentum:
                grad_m = d_alpha.transpose(-1, -2) @ grad_coef
                grad_m[..., -1, :] += grad_rows[..., 1]
                g_e += (d_alpha.transpose(-1, -2) @ g_sigma.unsqueeze(-1)).squeeze(-1)
                grad_d_alpha = (grad_coef @ m.transpose(-1, -2)).addcmul_(
                    g_sigma.unsqueeze(-1), e.unsqueeze(-2)
                )
                h_eta = grad_m.mul_(d_eta)
                grad_u = -h_eta.sum(-2)
                h_eta.mul_(minus_u)
                grad_log_eta = _reverse_cumsum(g_e * e + h_eta.sum(-1) - h_eta.sum(-2))
                h_alpha = grad_d_alpha.mul_(d_alpha)
            else:
                h_alpha = grad_coef.mul_(d_alpha)
                grad_u = -h_alpha.sum(-2)
                h_alpha.mul_(minus_u)
                grad_log_eta = None
            grad_log_alpha = _reverse_cumsum(g_beta * beta + h_alpha.sum(-1) - h_alpha.sum(-2))

        return (
            grad_q,
            grad_k,
            grad_offset,
            grad_u.to(u.dtype),
            grad_log_alpha,
            grad_log_eta,
            grad_w0,
            grad_s0,
            None,
            None,
        )


def linear_chunks(
    q: torch.Tensor,
    k: torch.Tensor,
    offset: torch.Tensor,
    u: torch.Tensor,
    log_alpha: torch.Tensor,
    log_eta: torch.Tensor | None,
    w0: torch.Tensor,
    s0: torch.Tensor | None,
    slope: float,
    chunk_reads: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """q, k (B, H, n, L, d), offset (B, H, n, L, d_v), u / log_alpha / log_eta (B, H, n, L),
    w0 / s0 (B, H, d_v, d).  Returns the reads (B, H, n, L, d_v) and the final W and S;
    ``chunk_reads``: every token read at its chunk's start W (titans-pytorch's semantics)."""
    y, weights, momentum = LinearChunks.apply(q, k, offset, u, log_alpha, log_eta, w0, s0, slope, chunk_reads)
    return y, weights, momentum if log_eta is not None else None
