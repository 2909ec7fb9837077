"""The memory's state between calls: what decoding carries from token to token.

Everything a continuation needs to reproduce the one-call result exactly: the chunk-start
weights (the gradient point), the weights and momentum after the tokens seen so far in
the current chunk, how far into the chunk we are, the cumulative decay since the chunk
start, a stateful algorithm's own state, and the last ``window - 1`` keys/values/gates for the Omega rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .axes import Weights


@dataclasses.dataclass
class MemoryState:
    start: Weights  # chunk-start weights, (B, H, d_out, d_in) each
    weights: Weights  # weights after the tokens of the current chunk seen so far
    momentum: Weights | None
    extra: dict[str, Any]
    offset: int  # tokens of the current chunk already applied (0 <= offset < chunk)
    log_decay: torch.Tensor  # (B, H) sum of log alpha since the chunk start
    sums: dict[str, torch.Tensor]  # (B, H[, d_v]) the axes' chunk sums: sum_i prod_{j>i} alpha_j x_i
    decayed_update: Weights | None = None
    aux_log_decay: torch.Tensor | None = None
    window_keys: torch.Tensor | None = None  # (B, H, <= window-1, d_k)
    window_values: torch.Tensor | None = None
    window_gates: dict[str, torch.Tensor] | None = None  # the bias's gates of those tokens
    # a stateful algorithm's own state (``LearningAlgorithm.state_defs``): it runs on across chunks
    algorithm_state: dict[str, Any] | None = None

    def map(self, fn: Any) -> MemoryState:
        """A copy with ``fn`` applied to every tensor (detach, to(device), index a batch)."""

        def go(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return fn(value)
            if isinstance(value, dict):
                return {k: go(v) for k, v in value.items()}
            return value

        return MemoryState(**{f.name: go(getattr(self, f.name)) for f in dataclasses.fields(MemoryState)})

    def detach(self) -> MemoryState:
        return self.map(torch.Tensor.detach)

    def closed(self, weights: torch.Tensor, momentum: torch.Tensor | None = None) -> MemoryState:
        """The state of a per-token path after its last token: the matrix memory ``weights``
        (and ``momentum``, when the rule has one) at a chunk start, nothing accumulated since."""
        return dataclasses.replace(
            self,
            start={"w": weights},
            weights={"w": weights},
            offset=0,
            log_decay=self.log_decay.new_zeros(self.log_decay.shape),
            sums={n: x.new_zeros(x.shape) for n, x in self.sums.items()},
            momentum={"w": momentum} if momentum is not None else self.momentum,
        )
