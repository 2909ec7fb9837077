"""Sum mixer: the read-outs of all memories are added (TNT's default combination)."""

from __future__ import annotations

import attrs
import torch
from torch import nn

import miraslab


@attrs.frozen
class SumParams:
    pass


class SumMixer(nn.Module):
    """out = global + sum of locals."""

    def __init__(self, params: SumParams, dim: int, n_memories: int):
        super().__init__()

    def forward(self, reads: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(reads).sum(0)


@miraslab.hookimpl
def register_mixers(register):
    register("sum", SumMixer, SumParams)
