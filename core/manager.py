"""Plugin loading and the registries of specs.

Built-in plugins (``DEFAULT_PLUGINS``) and third-party packages (entry-point group ``trainforge``)
register through the same hooks. Loading happens lazily, once. Environment switches:

- ``TRAINFORGE_LOAD_PLUGINS``: comma-separated entry-point names or distributions to load (an
  allow-list; empty string loads none). Built-ins always load unless blocked.
- ``TRAINFORGE_BLOCK_PLUGINS``: comma-separated plugin names to block (built-in module paths such as
  ``trainforge.plugins.models``, entry-point names, or distribution names: all of its entry points).
- ``TRAINFORGE_TRACE_PLUGINS=1``: log every hook call at INFO level.

A third-party plugin (an entry point) that fails to import, implements an unknown hook, raises in a hook,
registers the wrong spec type or a name another plugin registered does not take the other plugins down:
it is reported once (a warning naming its distribution and how to block it), listed by :func:`problems`
(``trainforge plugins`` shows it as broken, with the reason), and only its names are unusable; asking for
a name two plugins registered is the error. An entry point that registers no hook at all is listed as a
warning. Plugins registered in-process with :func:`register_plugin` still fail at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import pluggy

from trainforge import hookspecs
from trainforge.errors import PluginError
from trainforge.specs import CallbackSpec, DatasetSpec, ModelSpec, OptimizerSpec, SchedulerSpec, TaskSpec

log = logging.getLogger(__name__)

GROUP = hookspecs.PROJECT
DEFAULT_PLUGINS = (
    "trainforge.plugins.models",
    "trainforge.plugins.optimizers",
    "trainforge.plugins.datasets",
    "trainforge.plugins.schedulers",
    "trainforge.training.hooks",
    "trainforge.tracking.hooks",
    "trainforge.plugins.sequence",
    "trainforge.plugins.series",
    "trainforge.plugins.autoencoder",
    "trainforge.plugins.gan",
    "trainforge.plugins.estimators",
)
#: kind -> (hook name, spec class)
KINDS: dict[str, tuple[str, type]] = {
    "model": ("register_models", ModelSpec),
    "optimizer": ("register_optimizers", OptimizerSpec),
    "dataset": ("register_datasets", DatasetSpec),
    "scheduler": ("register_schedulers", SchedulerSpec),
    "callback": ("register_callbacks", CallbackSpec),
    "task": ("register_tasks", TaskSpec),
}


@dataclass(frozen=True)
class Entry:
    """A registered spec and where it came from."""

    kind: str
    spec: Any
    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class Problem:
    """A third-party plugin that is broken (``status="broken"``) or registers nothing (``"empty"``)."""

    plugin: str
    distribution: str
    version: str
    status: str
    reason: str


_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_registry: dict[str, dict[str, Entry]] | None = None
_entrypoints: dict[str, tuple[str, str]] = {}  # entry-point plugin name -> (distribution, version)
_problems: dict[str, Problem] = {}
_unusable: dict[tuple[str, str], str] = {}  # (kind, name) -> why (registered by two plugins)


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 distribution-name normalization


def _distribution_entrypoints(names: list[str]) -> list[str]:
    """The names given plus every entry point of a distribution named among them (PEP 503 normalized)."""
    if not names:
        return []
    from importlib import metadata

    wanted, out = {_canonical(a) for a in names}, list(names)
    for dist in metadata.distributions():
        if _canonical(dist.metadata["Name"] or "") in wanted:
            out += [ep.name for ep in dist.entry_points if ep.group == GROUP and ep.name not in out]
    return out


def _broken(plugin: str, reason: str, status: str = "broken") -> None:
    distribution, version = _entrypoints.get(plugin, ("(local)", ""))
    if plugin in _problems and _problems[plugin].status == "broken":
        return  # the first reason is the one reported
    _problems[plugin] = Problem(plugin, distribution, version, status, reason)
    if status == "broken":
        log.warning("plugin %r of distribution %s %s is broken and was skipped: %s (block it with "
                    "TRAINFORGE_BLOCK_PLUGINS=%s)", plugin, distribution, version, reason, distribution)
    elif status == "conflict":
        log.warning("plugin %r of distribution %s %s: %s; that name is unusable (block one with "
                    "TRAINFORGE_BLOCK_PLUGINS=%s)", plugin, distribution, version, reason, distribution)


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    """Load the entry points of group ``trainforge`` one by one; a failing one is recorded, not raised."""
    from importlib import metadata

    allow = _env_list("TRAINFORGE_LOAD_PLUGINS")
    allowed = None if allow is None else set(_distribution_entrypoints(allow))
    for ep in metadata.entry_points(group=GROUP):
        if (allowed is not None and ep.name not in allowed) or pm.is_blocked(ep.name) or pm.has_plugin(ep.name) \
                or ep.name in _problems:
            continue
        dist = getattr(ep, "dist", None)
        _entrypoints[ep.name] = (dist.metadata["Name"], dist.version) if dist is not None else ("(unknown)", "")
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any error of a third-party import
            _broken(ep.name, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
            continue
        try:
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if pm.has_plugin(ep.name):
                pm.unregister(name=ep.name)
            _broken(ep.name, str(exc))
            continue
        if not pm.get_hookcallers(plugin):
            _broken(ep.name, f"{ep.value!r} registers no hook (a forgotten @trainforge.hookimpl?)", "empty")


def entry_point_health() -> list[dict[str, str]]:
    """Every installed entry point of group ``trainforge``, imported on its own: ``name``, ``distribution``,
    ``value`` (the module it names) and ``error`` (``""`` when it imports; else the exception, one line).
    A blocked entry point (``TRAINFORGE_BLOCK_PLUGINS``) is not imported: its error is ``"blocked"``."""
    from importlib import metadata

    blocked = set(_env_list("TRAINFORGE_BLOCK_PLUGINS") or [])
    out = []
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        row = {"name": ep.name, "distribution": dist.metadata["Name"] if dist else "", "value": ep.value, "error": ""}
        if ep.name in blocked:
            row["error"] = "blocked"
        else:
            try:
                ep.load()
            except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a health check
                row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        out.append(row)
    return out


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide PluginManager, loading plugins on first use."""
    global _pm
    with _lock:
        if _pm is not None:
            return _pm
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        _entrypoints.clear()
        _problems.clear()
        for name in _distribution_entrypoints(_env_list("TRAINFORGE_BLOCK_PLUGINS") or []):
            pm.set_blocked(name)
        for module_path in DEFAULT_PLUGINS:
            if not pm.is_blocked(module_path):
                pm.register(importlib.import_module(module_path), name=module_path)
        _load_entrypoints(pm)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r}: {exc}") from exc
        if os.environ.get("TRAINFORGE_TRACE_PLUGINS"):
            pm.trace.root.setwriter(lambda msg: log.info("pluggy: %s", msg.rstrip()))
            pm.enable_tracing()
        _pm = pm
        return pm


def _origin(pm: pluggy.PluginManager, plugin: object, plugin_name: str) -> tuple[str, str]:
    if plugin_name in _entrypoints:
        return _entrypoints[plugin_name]
    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            return dist.project_name, dist.version
    if plugin_name.startswith("trainforge."):
        from trainforge import __version__

        return "trainforge", __version__
    return "(local)", ""


def _collect(pm: pluggy.PluginManager) -> dict[str, dict[str, Entry]]:
    registry: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
    _unusable.clear()
    dropped: set[str] = set()  # third-party plugins whose hook raised: none of their names is kept

    def drop(plugin: str, reason: str) -> None:
        dropped.add(plugin)
        for by_name in registry.values():
            for name in [n for n, e in by_name.items() if e.plugin == plugin]:
                del by_name[name]
        _broken(plugin, reason)

    for kind, (hook_name, spec_cls) in KINDS.items():
        caller = getattr(pm.hook, hook_name)
        # Each implementation is called on its own so every spec knows the plugin that registered it.
        for impl in reversed(caller.get_hookimpls()):
            if impl.plugin_name in dropped:
                continue
            distribution, version = _origin(pm, impl.plugin, impl.plugin_name)

            def register(spec: Any, _impl=impl, _dist=distribution, _ver=version, kind=kind, hook_name=hook_name,
                         spec_cls=spec_cls) -> None:
                if not isinstance(spec, spec_cls):
                    raise PluginError(
                        f"plugin {_impl.plugin_name!r} registered {type(spec).__name__} through "
                        f"{hook_name}; expected {spec_cls.__name__}"
                    )
                if (kind, spec.name) in _unusable:
                    return
                previous = registry[kind].get(spec.name)
                if previous is not None:
                    message = (f"{kind} {spec.name!r} is registered twice: by plugin {previous.plugin!r} "
                               f"({previous.distribution}) and by plugin {_impl.plugin_name!r} ({_dist})")
                    third_party = [p for p in (previous.plugin, _impl.plugin_name) if p in _entrypoints]
                    if not third_party:
                        raise PluginError(message)
                    del registry[kind][spec.name]
                    _unusable[(kind, spec.name)] = (f"{message}; block one with TRAINFORGE_BLOCK_PLUGINS="
                                                    f"{_entrypoints[third_party[-1]][0]}")
                    for plugin in third_party:
                        _broken(plugin, message, "conflict")
                    return
                registry[kind][spec.name] = Entry(kind, spec, _impl.plugin_name, _dist, _ver)

            if pm.trace.root._writer is not None:  # noqa: SLF001 - honour TRAINFORGE_TRACE_PLUGINS
                log.info("pluggy: calling %s of %s", hook_name, impl.plugin_name)
            try:
                impl.function(register=register)
            except Exception as exc:
                if impl.plugin_name not in _entrypoints:
                    raise  # built-ins and in-process plugins fail at once
                drop(impl.plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}")
    return registry


def problems() -> list[Problem]:
    """Third-party plugins that are broken, conflict with another plugin or register nothing (see the
    module docstring), in the order they were found."""
    registry()
    return list(_problems.values())


def registry() -> dict[str, dict[str, Entry]]:
    """All registered specs: ``{kind: {name: Entry}}``. Raises :class:`PluginError` on conflicts."""
    global _registry
    pm = get_plugin_manager()
    if _registry is None:
        _registry = _collect(pm)
    return _registry


def get(kind: str, name: str) -> Any:
    """Return the spec of ``kind`` called ``name``; an unknown name lists the available ones."""
    entries = registry()[kind]
    if (kind, name) in _unusable:
        raise PluginError(_unusable[(kind, name)])
    if name not in entries:
        available = ", ".join(sorted(entries)) or "(none)"
        broken = [p.plugin for p in _problems.values() if p.status == "broken"]
        hint = f" (broken plugins, see trainforge plugins: {', '.join(broken)})" if broken else ""
        raise PluginError(f"unknown {kind} {name!r}; available: {available}{hint}")
    return entries[name].spec


def entries(kind: str | None = None) -> list[Entry]:
    """Registered entries, sorted by kind then name."""
    reg = registry()
    kinds = [kind] if kind else list(KINDS)
    return [reg[k][n] for k in kinds for n in sorted(reg[k])]


def reset() -> None:
    """Forget loaded plugins and registries (tests, or after installing a package at run time)."""
    global _pm, _registry
    with _lock:
        _pm = None
        _registry = None
        _problems.clear()
        _unusable.clear()


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register an in-process plugin object (a module or class with hookimpls) and rebuild registries."""
    global _registry
    pm = get_plugin_manager()
    try:
        plugin_name = pm.register(plugin, name=name)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError:
            pm.unregister(plugin)  # leave nothing half-registered behind
            raise
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name or plugin!r}: {exc}") from exc
    _registry = None
    return plugin_name


def unregister_plugin(name: str) -> None:
    """Unregister a plugin registered with :func:`register_plugin`."""
    global _registry
    get_plugin_manager().unregister(name=name)
    _registry = None
