"""phi(x) = x: keys and queries reach the memory unchanged."""

from __future__ import annotations

import attrs

import miraslab
from miraslab.api import FeatureMap


@attrs.frozen
class IdentityParams:
    pass


class Identity(FeatureMap):
    """phi(x) = x."""

    def __init__(self, params: IdentityParams, dim: int):
        super().__init__(dim)


@miraslab.hookimpl
def register_features(register):
    register("identity", Identity, IdentityParams)
