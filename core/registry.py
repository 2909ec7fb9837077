"""The pluggy registry of Miras components.

One ``PluginManager("miraslab")``.  Every plugin module, built-in or third-party, is found
the same way: through the ``miraslab`` entry-point group of its distribution (miraslab's
own built-ins are entry points of the miraslab distribution).  When a plugin is
registered its ``register_*`` hooks are called with a typed ``register`` callable, and
the components they name are recorded with the plugin and distribution they came from.

``MIRASLAB_PLUGINS`` (comma-separated entry-point or distribution names) limits which
third-party plugins load; ``MIRASLAB_DISABLE_PLUGINS`` blocks some.  An empty
``MIRASLAB_PLUGINS=`` loads none.  Built-in plugins always load.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Callable, Iterator
from importlib import metadata
from types import ModuleType
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import MiraslabError, PluginError, RegistryError

BUILTIN_DISTRIBUTION = "miraslab"
ENTRY_POINT_GROUP = "miraslab"

# kind -> the hook that registers components of that kind
KIND_HOOKS: dict[str, str] = {
    "memory": "register_memories",
    "bias": "register_biases",
    "retention": "register_retentions",
    "algorithm": "register_algorithms",
    "features": "register_features",
    "mixer": "register_mixers",
    "layout": "register_layouts",
    "attention": "register_attentions",
    "task": "register_tasks",
    "monitor": "register_monitors",
}
KINDS = tuple(KIND_HOOKS)


@attrs.frozen
class Source:
    """Where a plugin came from: its entry-point name, distribution and version."""

    plugin: str
    distribution: str
    version: str

    def describe(self) -> str:
        version = f" {self.version}" if self.version else ""
        return f"plugin {self.plugin!r} (distribution {self.distribution}{version})"


@attrs.frozen
class ComponentInfo:
    kind: str
    name: str
    factory: Callable[..., Any]
    params: type
    source: Source

    @property
    def doc(self) -> str:
        text = (getattr(self.factory, "__doc__", None) or "").strip()
        return text.splitlines()[0] if text else ""

    def build(self, params: Any, **context: Any) -> Any:
        try:
            return self.factory(params, **context)
        except MiraslabError:  # already a sentence for the user (e.g. a combination that makes no sense)
            raise
        except Exception as exc:  # a plugin's own bug: name it
            raise PluginError(
                f"{self.kind} {self.name!r} from {self.source.describe()} failed to build: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class Registry:
    """Components by kind and name, filled by plugins through their ``register_*`` hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._components: dict[str, dict[str, ComponentInfo]] = {kind: {} for kind in KINDS}
        self._sources: dict[str, Source] = {}

    # --- plugins --------------------------------------------------------------------

    def load_entry_points(self) -> None:
        """Register every plugin module of the ``miraslab`` entry-point group."""
        allowed = _env_names("MIRASLAB_PLUGINS")
        blocked = _env_names("MIRASLAB_DISABLE_PLUGINS") or set()
        seen: set[tuple[str, str]] = set()
        for ep in sorted(_entry_points(), key=_entry_point_order):
            dist_name = ep.dist.name if ep.dist else "unknown"
            key = (_normalise(dist_name), ep.name)
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            builtin = _normalise(dist_name) == BUILTIN_DISTRIBUTION
            if not builtin:
                names = {ep.name, dist_name, _normalise(dist_name)}
                if allowed is not None and not names & allowed:
                    continue
                if names & blocked:
                    continue
            source = Source(ep.name, dist_name, ep.dist.version if ep.dist else "")
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"{source.describe()} could not be imported from {ep.value!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self.register_plugin(plugin, source)

    def register_plugin(self, plugin: ModuleType | object, source: Source) -> None:
        """Register one plugin object and record the components its hooks name."""
        if source.plugin in self._sources:
            other = self._sources[source.plugin]
            raise RegistryError(
                f"two plugins are named {source.plugin!r}: {other.describe()} and "
                f"{source.describe()}; rename one entry point"
            )
        try:
            self.pm.register(plugin, name=source.plugin)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(
                f"{source.describe()} is not a valid miraslab plugin: {exc}{_hook_hint(exc)}"
            ) from exc
        self._sources[source.plugin] = source
        added: list[tuple[str, str]] = []
        try:
            for kind, hook_name in KIND_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        self._call_register_hook(kind, hook_name, impl.function, source, added)
        except Exception:
            self.unregister_plugin(source.plugin)
            raise

    def _call_register_hook(
        self,
        kind: str,
        hook_name: str,
        function: Callable[..., Any],
        source: Source,
        added: list[tuple[str, str]],
    ) -> None:
        def register(name: str, factory: Callable[..., Any], params: type) -> None:
            self._add(kind, name, factory, params, source)
            added.append((kind, name))

        try:
            function(register=register)
        except (RegistryError, PluginError):
            raise
        except Exception as exc:
            raise PluginError(
                f"{source.describe()} raised in its {hook_name} hook: {type(exc).__name__}: {exc}"
            ) from exc

    def _add(self, kind: str, name: str, factory: Callable[..., Any], params: type, source: Source) -> None:
        where = f"{source.describe()} in register for {kind}"
        if not isinstance(name, str) or not name or not name.replace("_", "a").replace("-", "a").isalnum():
            raise RegistryError(f"{where}: name {name!r} must be a non-empty word (letters, digits, _ or -)")
        if not callable(factory):
            raise RegistryError(f"{where} {name!r}: factory {factory!r} is not callable")
        if not (isinstance(params, type) and attrs.has(params)):
            raise RegistryError(f"{where} {name!r}: params must be an attrs class, got {params!r}")
        if "name" in attrs.fields_dict(params):
            raise RegistryError(f"{where} {name!r}: params may not have a field called 'name'")
        existing = self._components[kind].get(name)
        if existing is not None:
            raise RegistryError(
                f"{kind} {name!r} is registered twice: by {existing.source.describe()} "
                f"and by {source.describe()}"
            )
        self._components[kind][name] = ComponentInfo(kind, name, factory, params, source)

    def unregister_plugin(self, plugin_name: str) -> None:
        """Remove a plugin and every component it registered (used by test fixtures)."""
        source = self._sources.pop(plugin_name, None)
        for table in self._components.values():
            for name in [n for n, c in table.items() if c.source == source]:
                del table[name]
        plugin = self.pm.get_plugin(plugin_name)
        if plugin is not None:
            self.pm.unregister(plugin)

    # --- lookup ---------------------------------------------------------------------

    def get(self, kind: str, name: str) -> ComponentInfo:
        if kind not in self._components:
            raise RegistryError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        table = self._components[kind]
        if name in table:
            return table[name]
        raise RegistryError(unknown_name_message(kind, name, list(table)))

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def components(self, kind: str | None = None) -> list[ComponentInfo]:
        kinds = [kind] if kind else list(KINDS)
        return [self._components[k][n] for k in kinds for n in sorted(self._components[k])]

    @property
    def sources(self) -> list[Source]:
        return list(self._sources.values())

    def hook(self) -> Any:
        return self.pm.hook


def unknown_name_message(kind: str, name: object, registered: list[str]) -> str:
    """``unknown bias 'omgea'; did you mean 'omega'? registered: omega, dot, ...``"""
    if not registered:
        return f"unknown {kind} {name!r}: no {kind} components are registered (is a plugin disabled?)"
    close = difflib.get_close_matches(str(name), registered, n=len(registered), cutoff=0.0)
    ordered = close + sorted(set(registered) - set(close))
    hint = ""
    best = difflib.get_close_matches(str(name), registered, n=1, cutoff=0.6)
    if best:
        hint = f"; did you mean {best[0]!r}?"
    return f"unknown {kind} {name!r}{hint} registered: {', '.join(ordered)}"


def _hook_hint(exc: pluggy.PluginValidationError) -> str:
    """ "; did you mean 'register_memories'?" for a misspelled hook name."""
    import re

    from . import hookspecs

    match = re.search(r"unknown hook '([^']+)'", str(exc))
    if not match:
        return ""
    known = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "miraslab_spec")]
    best = difflib.get_close_matches(match.group(1), known, n=1)
    return f"; did you mean {best[0]!r}?" if best else f"; the hooks are: {', '.join(sorted(known))}"


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-")


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _entry_point_order(ep: metadata.EntryPoint) -> tuple[int, str, str]:
    # built-ins first, so a third-party duplicate is the one reported as the intruder
    dist = _normalise(ep.dist.name) if ep.dist else ""
    return (0 if dist == BUILTIN_DISTRIBUTION else 1, dist, ep.name)


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _registry
    if _registry is None:
        registry = Registry()
        registry.load_entry_points()
        _registry = registry
    return _registry


def reset_registry() -> None:
    """Forget the loaded registry (the next ``get_registry`` rediscovers plugins)."""
    global _registry
    _registry = None


@contextlib.contextmanager
def use_registry(registry: Registry) -> Iterator[Registry]:
    """Make ``registry`` the process registry inside the block (tests, notebooks, embedding apps).

    The one registry story: every builder — recipes, ``MemoryLayer``, ``build_rule``, feature
    maps, TNT, the trainer — asks :func:`get_registry`, none takes a registry argument, so a
    component registered only on ``registry`` builds everywhere inside the block.
    """
    global _registry
    previous, _registry = _registry, registry
    try:
        yield registry
    finally:
        _registry = previous
