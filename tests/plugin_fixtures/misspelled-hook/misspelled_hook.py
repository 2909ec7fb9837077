"""A plugin whose hook name has a typo: pluggy's check_pending() must reject it at load time."""

import attrs

import miraslab


@attrs.frozen
class TypoParams:
    pass


@miraslab.hookimpl
def register_memoryes(register):  # sic: the spec is register_memories
    register("never_registered", lambda params: None, TypoParams)
