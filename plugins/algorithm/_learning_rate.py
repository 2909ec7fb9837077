"""What every built-in algorithm shares: the learning-rate gate theta_t and its two options.

theta_t = lr_max * sigmoid(w . x_t + b), starting at lr_init; the algorithms differ in their
defaults (gd steps at 0.1 of at most 1.0, the momentum-like ones at 0.01 of at most 0.1), so the
params base is made per default pair and each algorithm's params class subclasses one.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import attrs

import miraslab
from miraslab.api import GateDef, LearningAlgorithm


@cache
def lr_params(init: float, upper: float) -> type:
    """A params base: ``lr_init`` (default ``init``), ``lr_max`` (default ``upper``) and the check
    lr_init < lr_max; a subclass's own fields follow these two."""

    @attrs.frozen
    class LearningRateParams:
        lr_init: float = miraslab.param(init, gt=0, doc="theta_t at initialisation")
        lr_max: float = miraslab.param(upper, gt=0, doc="upper bound of theta_t")

        def cross_check(self) -> None:
            if self.lr_init >= self.lr_max:
                raise miraslab.api.ParamValueError(
                    "lr_init", f"a number < lr_max ({self.lr_max})", self.lr_init
                )

    return LearningRateParams


def normalized_param() -> Any:
    """The ``normalized`` option (``LearningAlgorithm.normalized``), on by default."""
    return miraslab.param(
        True, doc="divide each gradient by the squared norm of the memory's inputs (normalised LMS)"
    )


class LearningRateAlgorithm(LearningAlgorithm):
    """An algorithm built from params with ``lr_init``, ``lr_max`` and ``normalized``: its gate ``lr``."""

    def __init__(self, params: Any):
        super().__init__()
        self.params = params
        self.normalized = params.normalized

    def gates(self) -> list[GateDef]:
        return [GateDef("lr", "sigmoid", init=self.params.lr_init, scale=self.params.lr_max)]
