"""A plugin whose import fails, as one does when its compiled extension is missing."""

import acme_fast_kernels  # noqa: F401  -- no such module: the import is what fails

import miraslab


@miraslab.hookimpl
def register_memories(register):
    raise AssertionError("never reached: the import above fails first")
