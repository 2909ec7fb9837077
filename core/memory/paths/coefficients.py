"""The coefficient algebra of a chunk, shared by both chunked code paths.

For a chunk of L tokens with log-decays A (cumulative), momentum log-decays E, learning
rates theta and the Omega band Gamma (tokens x sources), the weights after token i are

    W_i = beta_i W_start + sigma_i S_start + sum_j coef[i, j] g_j
    S_s = exp(E_s) S_start + sum_j momentum_coef[s, j] g_j

with beta = exp(A), Dalpha[i, s] = exp(A_i - A_s) (s <= i), Deta likewise,
momentum_coef = -Deta diag(theta) Gamma, coef = Dalpha momentum_coef (or -Dalpha diag(theta)
Gamma without momentum) and sigma = Dalpha exp(E).  Leading dimensions (batch, heads,
chunks) broadcast.

With a channel-wise decay alpha or eta (one per value channel: per row of a matrix
memory) every row has its own decay matrices: the coefficients get a channel dimension
before the token dimension, (..., C, L) and (..., C, L, sources), with C = d_v or 1 where
a factor is the same for every row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from ..kernels.batched import column_product
from ..kernels.decay_matrix import decay_matrix
from ..rule.axes import Gates, at_least_fp32
from ..rule.memory_rule import MemoryRule


def scaled(value: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """value * scale (a retention's ``lr_scale`` on a rate or an update); a tensor scale is
    (B, H), one factor per batch element and head."""
    if isinstance(scale, float) and scale == 1.0:
        return value
    if isinstance(scale, torch.Tensor):
        return value * scale.reshape(*scale.shape, *[1] * (value.dim() - scale.dim())).to(value.dtype)
    return value * scale


@dataclasses.dataclass
class ChunkCoefficients:
    cum_alpha: torch.Tensor  # (..., L)
    d_alpha: torch.Tensor  # (..., L, L)
    beta: torch.Tensor  # (..., L)
    theta_rows: torch.Tensor  # (..., L)
    band: torch.Tensor | None = None  # (..., L, sources); None: the identity
    coef: torch.Tensor | None = None  # (..., L, sources)
    momentum_coef: torch.Tensor | None = None  # (..., L, sources)
    carry: torch.Tensor | None = None  # sigma (..., L)
    cum_eta: torch.Tensor | None = None  # (..., L)
    channels: bool = False  # a channel dimension before L: (..., C, L), (..., C, L, L)

    def times_theta_band(self, matrix: torch.Tensor, negate: bool = False) -> torch.Tensor:
        """matrix @ diag(theta) @ Gamma (or with -theta: negated on the rows, not the product)."""
        scaled = matrix * (-self.theta_rows if negate else self.theta_rows).unsqueeze(-2)
        if self.band is None:
            return scaled
        with _no_autocast(scaled):
            return scaled @ self.band

    def split(self, cut: Callable[[torch.Tensor], Sequence[torch.Tensor]]) -> list[ChunkCoefficients]:
        """One ChunkCoefficients per chunk, without the band: ``cut`` splits each tensor along
        its chunk dimension (``unbind``, or chunk-major copies)."""
        if self.band is not None:
            raise ValueError("coefficients with an Omega band are computed per piece")
        tensors = [f.name for f in dataclasses.fields(self) if f.name not in ("band", "channels")]
        parts = {
            name: cut(getattr(self, name)) if getattr(self, name) is not None else None for name in tensors
        }
        count = len(parts["beta"])
        return [
            ChunkCoefficients(
                **{name: p[i] if p is not None else None for name, p in parts.items()}, channels=self.channels
            )
            for i in range(count)
        ]


def chunk_coefficients(
    log_alpha: torch.Tensor,
    log_eta: torch.Tensor | None,
    theta_rows: torch.Tensor,
    band: torch.Tensor | None,
) -> ChunkCoefficients:
    """``band`` None means the identity (no Omega window): diag(theta) Gamma is then a column scaling.

    ``log_alpha`` and ``log_eta`` are (..., L) or, channel-wise, (..., L, C); ``theta_rows`` (..., L).
    """
    channels = log_alpha.dim() > theta_rows.dim() or (
        log_eta is not None and log_eta.dim() > theta_rows.dim()
    )
    if channels:  # channels before tokens; what is one per head gets a channel dimension of 1
        log_alpha = _channels_first(log_alpha, theta_rows)
        log_eta = _channels_first(log_eta, theta_rows) if log_eta is not None else None
        theta_rows = theta_rows.unsqueeze(-2)
        band = band.unsqueeze(-3) if band is not None else None
    cum_alpha = torch.cumsum(at_least_fp32(log_alpha), dim=-1)
    d_alpha = decay_matrix(cum_alpha)
    out = ChunkCoefficients(cum_alpha, d_alpha, torch.exp(cum_alpha), theta_rows, band, channels=channels)
    if log_eta is not None:  # momentum
        out.cum_eta = torch.cumsum(at_least_fp32(log_eta), dim=-1)
        out.momentum_coef = out.times_theta_band(decay_matrix(out.cum_eta), negate=True)
        with _no_autocast(d_alpha):  # autocast would run these products of decays in bf16
            out.coef = d_alpha @ out.momentum_coef
            out.carry = column_product(d_alpha, torch.exp(out.cum_eta).unsqueeze(-1)).squeeze(-1)
    else:
        out.coef = out.times_theta_band(d_alpha, negate=True)
    return out


def _no_autocast(like: torch.Tensor) -> torch.autocast:
    """Coefficients stay in (at least) fp32 like the gates they come from: in bf16 the products
    of decay matrices come out with relative errors near 2e-3 (tests/test_coefficients.py)."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def _channels_first(log_decay: torch.Tensor, theta_rows: torch.Tensor) -> torch.Tensor:
    """(..., L, C) -> (..., C, L); per head (..., L) -> (..., 1, L)."""
    return log_decay.transpose(-1, -2) if log_decay.dim() > theta_rows.dim() else log_decay.unsqueeze(-2)


def fold_chunks(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """(B, H, chunks * L, ...) -> (B, H, chunks, L, ...)."""
    return x.reshape(*x.shape[:2], chunks, x.shape[2] // chunks, *x.shape[3:])


@dataclasses.dataclass
class Rates:
    """Per-token rates from the plugins: the learning rate and its coefficient rows, log decays."""

    theta: torch.Tensor  # (..., L[, d_v]) as the algorithm gives it
    theta_rows: torch.Tensor  # (..., L): what multiplies each source in the coefficients
    log_alpha: torch.Tensor  # (..., L)
    log_eta: torch.Tensor | None  # (..., L), momentum only


def piece_rates(
    rule: MemoryRule,
    gates: Gates,
    like: torch.Tensor,
    chunks: int = 1,
    row_scale: torch.Tensor | None = None,
) -> Rates:
    """The rates of the tokens of ``like`` (B, H, T, d).

    The plugins see gates as (B, H, T[, d_v]), as documented; with ``chunks`` > 1 their
    rates are then folded into (B, H, chunks, T / chunks) so every chunk is computed at
    once.  ``row_scale`` (folded layout) multiplies the learning-rate rows.  A channel-wise
    learning rate stays out of the coefficients (it scales dl/dy per source instead), so
    their rows are then ones.
    """
    algorithm = rule.algorithm
    theta = algorithm.lr(gates)
    log_alpha = log_alpha_or_zeros(rule, gates, like.shape[:3], like)
    log_eta = algorithm.log_eta(gates) if algorithm.momentum else None
    if chunks > 1:
        theta, log_alpha = fold_chunks(theta, chunks), fold_chunks(log_alpha, chunks)
        log_eta = fold_chunks(log_eta, chunks) if log_eta is not None else None
    if rule.channelwise_lr:
        dtype = torch.promote_types(theta.dtype, torch.float32)
        theta_rows = torch.ones(theta.shape[:-1], dtype=dtype, device=like.device)
    else:
        theta_rows = at_least_fp32(theta)
    if row_scale is not None:
        theta_rows = theta_rows * row_scale
    return Rates(theta, theta_rows, log_alpha, log_eta)


def piece_coefficients(
    rule: MemoryRule,
    gates: Gates,
    like: torch.Tensor,
    band: torch.Tensor | None,
    chunks: int = 1,
    row_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ChunkCoefficients]:
    """The learning rate and the coefficients of the tokens of ``like``; see ``piece_rates``."""
    rates = piece_rates(rule, gates, like, chunks, row_scale)
    return rates.theta, chunk_coefficients(rates.log_alpha, rates.log_eta, rates.theta_rows, band)


def log_alpha_or_zeros(rule: MemoryRule, gates: Gates, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    log_alpha = rule.retention.log_alpha(gates)
    if log_alpha is None:
        return torch.zeros(shape, dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
    return log_alpha
