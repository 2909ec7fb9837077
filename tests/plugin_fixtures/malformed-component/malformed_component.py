"""A plugin whose second registration is malformed (params a dict, not an attrs class): the
registry must reject the plugin whole, the good first component included."""

import attrs

import miraslab


@attrs.frozen
class HalfParams:
    rate: float = 0.5


@miraslab.hookimpl
def register_retentions(register):
    register("half_forget", lambda params: None, HalfParams)
    register("bad_forget", lambda params: None, dict)
