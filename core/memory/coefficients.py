"""The coefficient algebra of a chunk, shared by both chunked code paths.

For a chunk of L tokens with log-decays A (cumulative), momentum log-decays E, learning
rates theta and the Omega band Gamma (tokens x sources), the weights after token i are

    W_i = beta_i W_start + sigma_i S_start + sum_j coef[i, j] g_j
    S_s = exp(E_s) S_start + sum_j momentum_coef[s, j] g_j

with beta = exp(A), Dalpha[i, s] = exp(A_i - A_s) (s <= i), Deta likewise,
momentum_coef = -Deta diag(theta) Gamma, coef = Dalpha momentum_coef (or -Dalpha diag(theta)
Gamma without momentum) and sigma = Dalpha exp(E).  Leading dimensions (batch, heads,
chunks) broadcast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .parts import Gates, at_least_fp32
from .rule import MemoryRule
from .sources import decay_matrix


@dataclasses.dataclass
class ChunkCoefficients:
    cum_alpha: torch.Tensor  # (..., L)
    d_alpha: torch.Tensor  # (..., L, L)
    beta: torch.Tensor  # (..., L)
    coef: torch.Tensor | None = None  # (..., L, sources)
    momentum_coef: torch.Tensor | None = None  # (..., L, sources)
    carry: torch.Tensor | None = None  # sigma (..., L)
    cum_eta: torch.Tensor | None = None  # (..., L)
    times_theta_band: Callable[[torch.Tensor], torch.Tensor] | None = (
        None  # matrix -> matrix diag(theta) Gamma
    )


def chunk_coefficients(
    rule: MemoryRule,
    gates: Gates,
    log_alpha: torch.Tensor,
    theta_rows: torch.Tensor,
    band: torch.Tensor | None,
) -> ChunkCoefficients:
    """``band`` None means the identity (no Omega window): diag(theta) Gamma is then a column scaling."""
    cum_alpha = torch.cumsum(at_least_fp32(log_alpha), dim=-1)
    d_alpha = decay_matrix(cum_alpha)

    def times_theta_band(matrix: torch.Tensor) -> torch.Tensor:  # matrix @ diag(theta) @ Gamma
        scaled = matrix * theta_rows.unsqueeze(-2)
        return scaled if band is None else scaled @ band

    out = ChunkCoefficients(cum_alpha, d_alpha, torch.exp(cum_alpha), times_theta_band=times_theta_band)
    if rule.algorithm.momentum:
        out.cum_eta = torch.cumsum(at_least_fp32(rule.algorithm.log_eta(gates)), dim=-1)
        out.momentum_coef = -times_theta_band(decay_matrix(out.cum_eta))
        out.coef = d_alpha @ out.momentum_coef
        out.carry = (d_alpha @ torch.exp(out.cum_eta).unsqueeze(-1)).squeeze(-1)
    else:
        out.coef = -times_theta_band(d_alpha)
    return out


def log_alpha_or_zeros(rule: MemoryRule, gates: Gates, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    log_alpha = rule.retention.log_alpha(gates)
    if log_alpha is None:
        return torch.zeros(shape, dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
    return log_alpha
