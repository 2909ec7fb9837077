"""The pluggy registry of Miras components.

One ``PluginManager("miraslab")``.  Every plugin module, built-in or third-party, is found
the same way: through the ``miraslab`` entry-point group of its distribution (miraslab's
own built-ins are entry points of the miraslab distribution).  When a plugin is
registered its ``register_*`` hooks are called with a typed ``register`` callable, and
the components they name are recorded with the plugin and distribution they came from.

``MIRASLAB_PLUGINS`` (comma-separated entry-point or distribution names) limits which
third-party plugins load; ``MIRASLAB_DISABLE_PLUGINS`` blocks some.  An empty
``MIRASLAB_PLUGINS=`` loads none.  Built-in plugins always load.

A third-party plugin that fails to import, raises in a ``register_*`` hook, registers a
malformed component or declares a plugin API range this miraslab is outside of is
isolated: recorded as a :class:`BrokenPlugin`, announced once with a
:class:`~miraslab.errors.PluginWarning`, and skipped.  Everything else loads; a recipe that
asks for a component the broken plugin would have provided gets an error with its cause.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from types import ModuleType
from typing import Any

import attrs
import pluggy

from . import hookspecs, plugin_api
from .errors import MiraslabError, PluginError, PluginWarning, RegistryError

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
class BrokenPlugin:
    """A third-party plugin that was skipped, with why and what it would have provided."""

    source: Source
    error: str  # one line: "plugin 'x' (distribution y 1.0) raised in ..."
    # (kind, name) it would have provided; kind None when only the name is known
    provides: tuple[tuple[str | None, str], ...] = ()
    kinds: tuple[str, ...] | None = None  # the kinds its module has hooks for; None: not imported
    cause: BaseException | None = attrs.field(default=None, eq=False, repr=False)

    def may_provide(self, kind: str, name: str) -> bool:
        return (kind, name) in self.provides or (None, name) in self.provides

    def may_provide_kind(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


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
        self.broken: list[BrokenPlugin] = []

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
            if builtin:  # a broken built-in is a broken miraslab install: say so, do not hide it
                self.register_plugin(_import(ep, source), source)
                continue
            self._load_isolated(ep, source)

    def _load_isolated(self, ep: metadata.EntryPoint, source: Source) -> None:
        """Register one third-party plugin; on any failure record it as broken and warn."""
        provides = _guess_provides(ep.name)
        try:
            plugin = _import(ep, source)
        except PluginError as exc:
            self._mark_broken(BrokenPlugin(source, str(exc), provides, None, exc.__cause__))
            return
        kinds = tuple(kind for kind, hook in KIND_HOOKS.items() if callable(getattr(plugin, hook, None)))
        added: list[tuple[str, str]] = []
        try:
            check_plugin_api(plugin, source)
            self.register_plugin(plugin, source, added)
        except MiraslabError as exc:
            provides = tuple(dict.fromkeys((*provides, *added)))
            self._mark_broken(BrokenPlugin(source, str(exc), provides, kinds, exc.__cause__ or exc))

    def _mark_broken(self, broken: BrokenPlugin) -> None:
        self.broken.append(broken)
        message = (
            f"{broken.error}; skipped it (the other plugins load); "
            f"silence this with MIRASLAB_DISABLE_PLUGINS={broken.source.plugin}"
        )
        warnings.warn(PluginWarning(message, broken.cause), stacklevel=2)

    def register_plugin(
        self, plugin: ModuleType | object, source: Source, added: list[tuple[str, str]] | None = None
    ) -> None:
        """Register one plugin object and record the components its hooks name.

        Raises on a failure, leaving nothing of the plugin registered; ``added`` collects the
        ``(kind, name)`` pairs it registered before that (what it would have provided).
        """
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
        added = [] if added is None else added
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
            added.append((kind, name))  # before the checks: a rejected name was still meant
            self._add(kind, name, factory, params, source)

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
        message = unknown_name_message(kind, name, list(table))
        likely = [b for b in self.broken if b.may_provide(kind, str(name))]
        if likely:  # the recipe needs a component of a broken plugin: this command fails with its error
            causes = "; ".join(b.error for b in likely)
            raise RegistryError(
                f"unknown {kind} {name!r}: it comes from a plugin that failed to load: {causes}"
            ) from likely[0].cause
        maybe = [b for b in self.broken if b.may_provide_kind(kind)]
        if maybe:
            causes = "; ".join(b.error for b in maybe)
            raise RegistryError(
                f"{message}; it may come from a plugin that failed to load: {causes}"
            ) from maybe[0].cause
        raise RegistryError(message)

    def provider(self, kind: str, name: str) -> Source | None:
        """The source of a registered component, or None."""
        info = self._components.get(kind, {}).get(name)
        return info.source if info is not None else None

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


def check_plugin_api(plugin: object, source: Source) -> None:
    """PluginError when the plugin declares a plugin API range this miraslab is outside of."""
    spec = getattr(plugin, plugin_api.ATTRIBUTE, None)
    if spec is None:
        return
    try:
        ok = plugin_api.supports(spec)
    except ValueError as exc:
        raise PluginError(f"{source.describe()}: {plugin_api.ATTRIBUTE}: {exc}") from None
    if not ok:
        from . import __version__

        raise PluginError(
            f"{source.describe()} supports the miraslab plugin API {spec}, but miraslab {__version__} "
            f"provides plugin API {plugin_api.PLUGIN_API_VERSION}; install a release of "
            f"{source.distribution} for API {plugin_api.PLUGIN_API_VERSION}, or a miraslab in its range"
        )


def _import(ep: metadata.EntryPoint, source: Source) -> Any:
    try:
        return ep.load()
    except Exception as exc:
        raise PluginError(
            f"{source.describe()} could not be imported from {ep.value!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _guess_provides(entry_point: str) -> tuple[tuple[str | None, str], ...]:
    """ "memory.ttt_ln" -> memory 'ttt_ln'; "ttt_ln" -> 'ttt_ln' of any kind (the usual spellings)."""
    kind, _, name = entry_point.rpartition(".")
    if kind in KIND_HOOKS and name:
        return ((kind, name),)
    return ((None, entry_point),)


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
