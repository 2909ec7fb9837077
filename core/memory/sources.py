"""Gradient sources: the tokens whose inner-loss gradients a step uses.

With the Omega rule (window c) the update at t uses the gradients of tokens t-c+1..t, so
the last c-1 tokens of one call or chunk are sources for the next; the state carries
their keys, values and bias gates.  Both execution paths use these helpers, so they
agree on which tokens a window holds and how each is weighted.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .parts import Gates
from .rule import MemoryRule
from .state import MemoryState


def with_window(
    rule: MemoryRule, state: MemoryState, keys: torch.Tensor, values: torch.Tensor, gates: Gates
) -> tuple[torch.Tensor, torch.Tensor, Gates, int]:
    """The buffered window tokens followed by ``keys``/``values``; returns how many were buffered."""
    names = rule.bias_gate_names()
    source_gates = {n: gates[n] for n in names}
    if rule.window == 1 or state.window_keys is None:
        return keys, values, source_gates, 0
    buffered = state.window_keys.shape[2]
    keys = torch.cat([state.window_keys, keys], dim=2)
    values = torch.cat([state.window_values, values], dim=2)
    source_gates = {n: torch.cat([state.window_gates[n], g], dim=2) for n, g in source_gates.items()}
    return keys, values, source_gates, buffered


def keep_window(
    rule: MemoryRule, state: MemoryState, keys: torch.Tensor, values: torch.Tensor, gates: Gates
) -> None:
    """Store the last window-1 sources in ``state`` for the next call."""
    if rule.window == 1:
        return
    keep = rule.window - 1
    state.window_keys = keys[:, :, -keep:]
    state.window_values = values[:, :, -keep:]
    state.window_gates = {n: g[:, :, -keep:] for n, g in gates.items()}


def window_band(
    rule: MemoryRule,
    source_gates: Gates,
    buffered: int,
    tokens: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Gamma (B, H, tokens, sources): weight of source j in the update of token s.

    ``gamma_j * omega^(s-j)`` when j is among the ``window`` most recent tokens up to s.
    """
    sources = buffered + tokens
    bias = rule.bias
    s_index = torch.arange(tokens, device=device).unsqueeze(1) + buffered
    j_index = torch.arange(sources, device=device).unsqueeze(0)
    distance = s_index - j_index
    inside = (distance >= 0) & (distance < rule.window)
    band = inside.to(dtype)
    if bias.window_decay != 1.0:
        decay = torch.tensor(bias.window_decay, device=device, dtype=dtype)
        band = band * torch.pow(decay, distance.clamp(min=0).to(dtype))
    if bias.window_gate is not None and not rule.channelwise_window:  # channel-wise: on the sources
        band = band * source_gates[bias.window_gate].to(dtype).unsqueeze(-2)
    return band


def decay_matrix(log_alpha_cumsum: torch.Tensor) -> torch.Tensor:
    """exp(A_i - A_s) for s <= i, else 0; (B, H, L) -> (B, H, L, L). Stable: A is non-increasing.

    The exponent is clamped to [1 + log(smallest normal), 0] before exp, and the upper
    triangle zeroed after: exp of -inf, of an overflowing exponent or with a subnormal result
    takes a slow path on CPU (436, 1134 and 5174 us against 164 us for a (2, 4, 16, 64, 64)
    exp here), and subnormals slow every later product.  A decay below e times the smallest
    normal (3.2e-38 in fp32) comes out as that value instead.  Differentiable once, by hand:
    dD_is/dA_i = D_is = -dD_is/dA_s (autograd through the clamp, exp and mask spent 10 ms of
    a channel-wise layer's backward on masks); a clamped decay's gradient comes out as its
    value, 3.2e-38, in place of the true one below it.
    """
    if torch.is_grad_enabled() and log_alpha_cumsum.requires_grad:
        return _DecayMatrix.apply(log_alpha_cumsum)
    return _decay_matrix(log_alpha_cumsum)


def _decay_matrix(log_alpha_cumsum: torch.Tensor) -> torch.Tensor:
    length, dtype = log_alpha_cumsum.shape[-1], log_alpha_cumsum.dtype
    # fp32's floor at least: fp16's smallest normal (6e-5) would clamp decays that matter
    floor = 1.0 + math.log(torch.finfo(torch.promote_types(dtype, torch.float32)).tiny)
    lower = torch.ones(length, length, dtype=dtype, device=log_alpha_cumsum.device).tril_()
    diff = log_alpha_cumsum.unsqueeze(-1) - log_alpha_cumsum.unsqueeze(-2)
    return diff.clamp_(min=floor, max=0.0).exp_().mul_(lower)  # in place: one (L x L) allocation


class _DecayMatrix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_alpha_cumsum):
        decay = _decay_matrix(log_alpha_cumsum)
        ctx.save_for_backward(decay)
        return decay

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (decay,) = ctx.saved_tensors
        h = grad * decay  # zero above the diagonal, where the decay is
        return h.sum(-1) - h.sum(-2)
