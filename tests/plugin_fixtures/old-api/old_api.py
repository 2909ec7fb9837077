"""A plugin declaring a plugin API range miraslab 1.x is outside of: it must be skipped, not loaded."""

import attrs

import miraslab

MIRASLAB_PLUGIN_API = ">=2,<3"


@attrs.frozen
class OldForgetParams:
    rate: float = 0.9


@miraslab.hookimpl
def register_retentions(register):
    register("old_forget", lambda params: None, OldForgetParams)
