"""No retention gate: the memory never forgets (alpha_t = 1), as in DeltaNet and linear attention."""

from __future__ import annotations

import attrs

import miraslab
from miraslab.api import Retention


@attrs.frozen
class NoneParams:
    pass


class NoRetention(Retention):
    """alpha_t = 1."""

    def __init__(self, params: NoneParams):
        super().__init__()


@miraslab.hookimpl
def register_retentions(register):
    register("none", NoRetention, NoneParams)
