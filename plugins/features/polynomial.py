"""Polynomial feature map (ATLAS, arXiv 2505.23735 sec. 3.1): raise the memory's capacity
by approximating exp(q^T k) ~ sum_{i<=p} a_i (q^T k)^i, with learnable a_i initialised to 1/i!.

``mode = "tensor"`` is the paper's map: query features [a_0, a_1 q, a_2 (q (x) q), ...] and
key features [1, k, k (x) k, ...], so phi(q)^T phi(k) = sum_i a_i (q^T k)^i exactly; the
symmetric tensor powers are stored once (off-diagonal terms scaled by sqrt(2)), giving
1 + d + d(d+1)/2 features for p = 2.
``mode = "elementwise"`` keeps the width: phi(x)_c = sum_i a_i x_c^i on both sides (the
TNT-Atlas seed's "polynomial coefficients [1, 1, 0.5]").
"""

from __future__ import annotations

import itertools
import math

import attrs
import torch
from torch import nn

import miraslab
from miraslab.api import FeatureMap


@attrs.frozen
class PolynomialParams:
    degree: int = miraslab.param(2, ge=1, le=4, doc="p: highest power")
    mode: str = miraslab.param("tensor", choices=("tensor", "elementwise"), doc="see the module docstring")
    learnable: bool = miraslab.param(True, doc="learn the coefficients a_i")
    coefficients: tuple[float, ...] = miraslab.param(factory=tuple, doc="initial a_0..a_p; empty means 1/i!")

    def cross_check(self) -> None:
        if self.coefficients and len(self.coefficients) != self.degree + 1:
            raise miraslab.api.ParamValueError(
                "coefficients", f"{self.degree + 1} numbers (a_0..a_{self.degree})", list(self.coefficients)
            )


def symmetric_power_plan(dim: int, power: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Monomial indices and weights with sum_m w_m^2 prod q_idx prod k_idx = (q.k)^power.

    Each multiset of indices appears once, weighted by sqrt of its multinomial count.
    Plain Python, so it also works while a model is built on the meta device.
    """
    index = list(itertools.combinations_with_replacement(range(dim), power))
    counts = [
        math.factorial(power) / math.prod(math.factorial(row.count(i)) for i in set(row)) for row in index
    ]
    cpu = torch.device("cpu")
    return torch.tensor(index, device=cpu), torch.tensor(counts, device=cpu).sqrt()


class Polynomial(FeatureMap):
    """Learnable polynomial kernel features of degree p."""

    no_weight_decay = ("coefficients",)  # the kernel's gains a_i: decay would pull them to a linear kernel

    def __init__(self, params: PolynomialParams, dim: int):
        super().__init__(dim)
        self.degree, self.mode = params.degree, params.mode
        initial = params.coefficients or tuple(1 / math.factorial(i) for i in range(params.degree + 1))
        coefficients = torch.tensor(initial, dtype=torch.float32)
        if params.learnable:
            self.coefficients = nn.Parameter(coefficients)
        else:
            self.register_buffer("coefficients", coefficients)
        if self.mode == "tensor":
            self.out_dim = sum(math.comb(dim + i - 1, i) for i in range(params.degree + 1))
            for power in range(2, params.degree + 1):
                index, weight = symmetric_power_plan(dim, power)
                self.register_buffer(f"index{power}", index, persistent=False)
                self.register_buffer(f"weight{power}", weight, persistent=False)

    def forward(self, x: torch.Tensor, query: bool = False) -> torch.Tensor:
        a = self.coefficients.to(x.dtype)
        if self.mode == "elementwise":
            powers = torch.stack([x**i for i in range(self.degree + 1)], dim=-1)
            return powers @ a
        blocks = [x.new_ones(*x.shape[:-1], 1), x]
        for power in range(2, self.degree + 1):
            index, weight = getattr(self, f"index{power}"), getattr(self, f"weight{power}")
            blocks.append(x[..., index].prod(dim=-1) * weight.to(x.dtype))
        if query:  # the coefficients sit on the query side only: phi(q).phi(k) = sum a_i (q.k)^i
            blocks = [block * a[i] for i, block in enumerate(blocks)]
        return torch.cat(blocks, dim=-1)


@miraslab.hookimpl
def register_features(register):
    register("polynomial", Polynomial, PolynomialParams)
