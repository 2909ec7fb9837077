"""The Omega window (ATLAS, arXiv 2505.23735): the tokens whose inner-loss gradients a step uses.

With the Omega rule (window c) the update at t uses the gradients of tokens t-c+1..t, so
the last c-1 tokens of one call or chunk are sources for the next; the state carries
their keys, values and bias gates.  Both execution paths use these helpers, so they
agree on which tokens a window holds and how each is weighted.
"""

from __future__ import annotations

import torch

from ..rule.axes import Gates
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState


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
