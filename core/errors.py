"""Errors a user sees: each one a short sentence, never a traceback."""

from __future__ import annotations


class MiraslabError(Exception):
    """Base class of every error the CLI prints as text and exits 2 on."""


class RecipeError(MiraslabError):
    """One or more problems in a recipe, each ``file: dotted.key: message``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RegistryError(MiraslabError):
    """A plugin could not be loaded, or a component name is unknown or taken twice."""


class PluginError(MiraslabError):
    """A plugin's own code raised; the message names the plugin and its distribution."""


class PluginWarning(UserWarning):
    """A third-party plugin was skipped (it failed to load); the CLI prints it as ``warning: ...``
    (and, under ``--traceback``, the ``cause`` that broke it)."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


class ProvenanceWarning(UserWarning):
    """A run's component comes from another version of its distribution than it was trained with."""


class MissingPackageError(MiraslabError):
    """An optional package a component needs is not installed; the message says what to
    ``pip install`` (the conformance kit skips such a component instead of failing it)."""


# The exit code of a run stopped by a check, one per cause (docs/diagnostics.md lists them);
# 2 stays every other error's, 130 an interrupt.
STOP_EXIT_CODES = {
    "stopped": 3,  # a monitor stopped the run without naming a cause below
    "diverged": 4,  # non-finite loss, gradient norm or parameters
    "loss_spike": 5,
    "gate_collapse": 6,  # a MAG/MAC gate's mean below its floor
    "dead_gates": 7,  # pre-activations in the linear region
    "saturated_gates": 8,
    "mixer_extreme": 9,  # TNT's mixer alpha pinned near 0 or 1
    "memory_unused": 10,  # the carry gain below its floor
    "precision": 11,  # updates below the resolution of a parameter's dtype
}


class RunStopped(MiraslabError):
    """A check stopped the run; ``exit_code`` says which kind of check."""

    def __init__(self, message: str, cause: str = "stopped"):
        super().__init__(message)
        self.cause = cause
        self.exit_code = STOP_EXIT_CODES.get(cause, STOP_EXIT_CODES["stopped"])
