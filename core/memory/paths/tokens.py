"""What every path runs over, and what it gives back.

A path (``recurrent.step``/``recurrent``, ``chunked``/``_piece``, ``chunked_affine.whole_chunks``,
``chunked_channelwise.sub_chunked``, ``chunked_per_token``) is a function
``(rule, tokens, state, chunk_size, ...) -> (reads, state)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..rule.axes import Gates
from ..rule.state import MemoryState

Result = tuple[torch.Tensor, MemoryState]  # the reads (B, H, T, d_v), and the state after the last token


class Tokens(NamedTuple):
    """q, k (B, H, T, d_k) after the feature map, v (B, H, T, d_v), and the gates
    {name: (B, H, T) or (B, H, T, d_v)} as the rule's ``gate_defs()`` describe them
    (one token: the same without T)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gates: Gates

    def at(self, index: int | slice) -> Tokens:
        """The tokens at ``index`` along the time dimension (2): one token, or a span."""
        return Tokens(
            self.q[:, :, index],
            self.k[:, :, index],
            self.v[:, :, index],
            {name: gate[:, :, index] for name, gate in self.gates.items()},
        )
