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
