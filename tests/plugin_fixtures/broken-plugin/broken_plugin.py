"""A plugin with a bug in its registration hook: miraslab must name it, not crash."""

import miraslab


@miraslab.hookimpl
def register_memories(register):
    raise RuntimeError("the acme memory server is unreachable")
