"""What ``memory_op`` accepts, checked before any work: one line naming the argument.

Without these checks a wrong shape surfaces deep inside the chunked path as a torch error
about split sizes or batch matrices, and a missing gate as a bare ``KeyError``.
"""

from __future__ import annotations

import torch

from ..rule.axes import Gates
from ..rule.memory_rule import MemoryRule
from ..rule.state import MemoryState


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_op_inputs(
    rule: MemoryRule,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    state: MemoryState | None,
) -> None:
    """Raise ValueError unless q, k (B, H, T, d_k), v (B, H, T, d_v), the rule's gates
    (B, H, T[, d_v]) and ``state`` (batch B, H heads) fit ``rule`` and each other."""
    heads, d_key, d_value = rule.arch.heads, rule.arch.d_in, rule.arch.d_out
    for name, x, width, what in (("q", q, d_key, "d_k"), ("k", k, d_key, "d_k"), ("v", v, d_value, "d_v")):
        if x.dim() != 4 or x.shape[1] != heads or x.shape[3] != width:
            raise ValueError(
                f"memory_op: {name} must be (batch, heads={heads}, seq, {what}={width}), got shape {_shape(x)}"
            )
    lead = _shape(q)[:3]
    for name, x in (("k", k), ("v", v)):
        if _shape(x)[:3] != lead:
            raise ValueError(
                f"memory_op: {name} must have q's (batch, heads, seq) = {lead}, got shape {_shape(x)}"
            )
    expected = rule.gate_layout
    listed = ", ".join(repr(n) for n in sorted(expected)) or "none"
    missing, unused = sorted(expected.keys() - gates.keys()), sorted(gates.keys() - expected.keys())
    if missing:
        raise ValueError(f"memory_op: gates has no {missing[0]!r} (this rule's gates: {listed})")
    if unused:
        raise ValueError(
            f"memory_op: gates has {unused[0]!r}, which this rule does not use (its gates: {listed})"
        )
    for name, channelwise in expected.items():
        want = (*lead, d_value) if channelwise else lead
        if _shape(gates[name]) != want:
            per = " (one value per value channel)" if channelwise else ""
            raise ValueError(
                f"memory_op: gates[{name!r}] must be {want}{per}, got shape {_shape(gates[name])}"
            )
    if state is not None and _shape(state.log_decay)[:2] != lead[:2]:
        raise ValueError(
            f"memory_op: state is for (batch, heads) = {_shape(state.log_decay)[:2]}, "
            f"the inputs are {lead[:2]}"
        )
