"""Plugin loading and the registry of specs: one :class:`PluginRegistry` per process (``REGISTRY``).

Built-in plugins (``DEFAULT_PLUGINS``) and third-party packages (entry-point group ``trainforge``)
register through the same hooks, called through pluggy with keyword arguments. Loading happens lazily,
once. Environment switches:

- ``TRAINFORGE_LOAD_PLUGINS``: comma-separated entry-point names or distributions to load (an
  allow-list; empty string loads none). Built-ins always load unless blocked.
- ``TRAINFORGE_BLOCK_PLUGINS``: comma-separated plugins to block (built-in module paths such as
  ``trainforge.plugins.models``, entry-point names, or distribution names: all of its entry points).
- ``TRAINFORGE_TRACE_PLUGINS=1``: log every hook call at INFO level (pluggy's hook-call monitoring).

Names (docs/plugins.md, "Plugin names"): every spec is also ``DIST:NAME`` (the distribution as pip knows
it, PEP 503-normalized; ``trainforge`` for built-ins; the plugin's name for an in-process one). A built-in
(or in-process plugin) keeps its bare name when a package registers it too: the package's spec is
shadowed, with one warning. A bare name two packages register is an error listing the qualified ones.

A third-party plugin that fails to import, implements an unknown hook, raises in a hook or registers the
wrong spec type is reported once (a warning naming its distribution and how to block it) and listed by
:func:`problems`; the other plugins keep working. Plugins registered in process fail at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from dataclasses import dataclass, replace
from typing import Any

import pluggy

from trainforge import hookspecs
from trainforge.errors import PluginError
from trainforge.specs import CallbackSpec, DatasetSpec, ModelSpec, OptimizerSpec, SchedulerSpec, TaskSpec

log = logging.getLogger(__name__)

GROUP = hookspecs.PROJECT
#: the distribution qualifier of the built-in specs: ``trainforge:mlp``
BUILTIN_DISTRIBUTION = "trainforge"
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
#: plugin type (the config section that selects it) -> (hook name, spec class)
PLUGIN_TYPES: dict[str, tuple[str, type]] = {
    "model": ("register_models", ModelSpec),
    "optimizer": ("register_optimizers", OptimizerSpec),
    "dataset": ("register_datasets", DatasetSpec),
    "scheduler": ("register_schedulers", SchedulerSpec),
    "callback": ("register_callbacks", CallbackSpec),
    "task": ("register_tasks", TaskSpec),
}


def canonical(name: str) -> str:
    """PEP 503 name normalization (``Trainforge_TabKit`` -> ``trainforge-tabkit``), as pip compares names."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Entry:
    """A registered spec and where it came from. ``qualifier`` precedes the colon of its qualified name
    (the distribution, ``trainforge`` for built-ins, the plugin's name for an in-process plugin); ``status``
    is ``""`` when the bare name selects it, ``"shadowed"`` when a built-in holds that name (``shadowed_by``)
    and ``"ambiguous"`` when other third-party packages register it too."""

    plugin_type: str
    spec: Any
    plugin: str
    distribution: str
    version: str
    qualifier: str
    status: str = ""
    shadowed_by: str = ""

    @property
    def qualified_name(self) -> str:
        """``DIST:NAME``, which always selects this spec."""
        return f"{self.qualifier}:{self.spec.name}"

    @property
    def name(self) -> str:
        """The name that selects this spec: the bare name unless another spec holds or shares it."""
        return self.qualified_name if self.status else self.spec.name


@dataclass(frozen=True)
class Problem:
    """A third-party plugin that is broken (``status="broken"``) or registers nothing (``"empty"``)."""

    plugin: str
    distribution: str
    version: str
    status: str
    reason: str


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


def _distribution_entrypoints(names: list[str]) -> list[str]:
    """The names given plus every entry point of a distribution named among them (PEP 503 normalized)."""
    if not names:
        return []
    from importlib import metadata

    wanted, out = {canonical(a) for a in names}, list(names)
    for dist in metadata.distributions():
        if canonical(dist.metadata["Name"] or "") in wanted:
            out += [ep.name for ep in dist.entry_points if ep.group == GROUP and ep.name not in out]
    return out


def _trace_before(hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
    log.info("pluggy: calling %s of %s", hook_name, ", ".join(i.plugin_name for i in impls))


def _trace_after(outcome: pluggy.Result, hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
    if outcome.exception is not None:
        log.info("pluggy: %s raised %s: %s", hook_name, type(outcome.exception).__name__, outcome.exception)


class PluginRegistry:
    """The process's plugins: the pluggy PluginManager, the specs its hooks registered, by bare and
    qualified name, and the third-party plugins that broke. Built lazily, once, behind a lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self._pm: pluggy.PluginManager | None = None
        self._origins: dict[str, tuple[str, str]] = {}  # entry-point plugin name -> (distribution, version)
        self._problems: dict[str, Problem] = {}
        self._warned: set[str] = set()
        self._entries: dict[str, list[Entry]] | None = None  # plugin type -> entries, registration order
        self._names: dict[str, dict[str, Entry]] = {}  # plugin type -> {bare or canonical qualified name: entry}

    def plugin_manager(self) -> pluggy.PluginManager:
        """The PluginManager with the built-ins and the allowed entry points registered (loaded once)."""
        with self._lock:
            if self._pm is None:
                pm = pluggy.PluginManager(GROUP)
                pm.add_hookspecs(hookspecs)
                for name in _distribution_entrypoints(_env_list("TRAINFORGE_BLOCK_PLUGINS") or []):
                    pm.set_blocked(name)
                for module_path in DEFAULT_PLUGINS:
                    if not pm.is_blocked(module_path):
                        pm.register(importlib.import_module(module_path), name=module_path)
                self._load_entrypoints(pm)
                try:
                    pm.check_pending()
                except pluggy.PluginValidationError as exc:
                    raise PluginError(f"plugin {exc.plugin!r}: {exc}") from exc
                if os.environ.get("TRAINFORGE_TRACE_PLUGINS"):  # pluggy's hook-call monitoring
                    pm.add_hookcall_monitoring(_trace_before, _trace_after)
                self._pm = pm
            return self._pm

    def _load_entrypoints(self, pm: pluggy.PluginManager) -> None:
        """Load the entry points of group ``trainforge`` one by one; a failing one is recorded, not raised."""
        from importlib import metadata

        allow = _env_list("TRAINFORGE_LOAD_PLUGINS")
        allowed = None if allow is None else set(_distribution_entrypoints(allow))
        for ep in metadata.entry_points(group=GROUP):
            if (allowed is not None and ep.name not in allowed) or pm.is_blocked(ep.name) or pm.has_plugin(ep.name) \
                    or ep.name in self._problems:
                continue
            dist = getattr(ep, "dist", None)
            self._origins[ep.name] = (dist.metadata["Name"], dist.version) if dist is not None else ("(unknown)", "")
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any error of a third-party import
                self._broken(ep.name, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
                continue
            try:
                pm.register(plugin, name=ep.name)
                pm.check_pending()
            except pluggy.PluginValidationError as exc:
                if pm.has_plugin(ep.name):
                    pm.unregister(name=ep.name)
                self._broken(ep.name, str(exc))
                continue
            if not pm.get_hookcallers(plugin):
                self._broken(ep.name, f"{ep.value!r} registers no hook (a forgotten @trainforge.hookimpl?)", "empty")

    def _broken(self, plugin: str, reason: str, status: str = "broken") -> None:
        if plugin in self._problems:
            return  # the first reason is the one reported
        distribution, version = self._origins.get(plugin, ("(local)", ""))
        self._problems[plugin] = Problem(plugin, distribution, version, status, reason)
        if status == "broken":
            log.warning("plugin %r of distribution %s %s is broken and was skipped: %s (block it with "
                        "TRAINFORGE_BLOCK_PLUGINS=%s)", plugin, distribution, version, reason, distribution)

    def _origin(self, plugin_name: str) -> tuple[str, str, str]:
        """``(distribution, version, qualifier)`` of a registered plugin."""
        if plugin_name in self._origins:
            distribution, version = self._origins[plugin_name]
            return distribution, version, distribution
        if plugin_name in DEFAULT_PLUGINS:
            from trainforge import __version__

            return BUILTIN_DISTRIBUTION, __version__, BUILTIN_DISTRIBUTION
        return "(local)", "", plugin_name

    def _call(self, pm: pluggy.PluginManager, plugin_name: str, plugin: object, others: list[object]) -> list[Entry]:
        """Every spec one plugin registers: each of its hooks called through pluggy on that plugin alone
        (``subset_hook_caller``), so each spec knows its origin and pluggy matches the arguments."""
        distribution, version, qualifier = self._origin(plugin_name)
        found: list[Entry] = []
        for plugin_type, (hook_name, spec_cls) in PLUGIN_TYPES.items():
            def register(spec: Any, plugin_type: str = plugin_type, hook_name: str = hook_name,
                         spec_cls: type = spec_cls) -> None:
                if not isinstance(spec, spec_cls):
                    raise PluginError(f"plugin {plugin_name!r} registered {type(spec).__name__} through "
                                      f"{hook_name}; expected {spec_cls.__name__}")
                found.append(Entry(plugin_type, spec, plugin_name, distribution, version, qualifier))

            if not any(impl.plugin is plugin for impl in getattr(pm.hook, hook_name).get_hookimpls()):
                continue
            try:
                pm.subset_hook_caller(hook_name, remove_plugins=others)(register=register)
            except Exception as exc:
                if plugin_name not in self._origins:
                    raise  # built-ins and in-process plugins fail at once, with their traceback
                raise PluginError(f"{hook_name} raised {type(exc).__name__}: {exc}") from exc
        return found

    def _collect(self, pm: pluggy.PluginManager) -> dict[str, list[Entry]]:
        """All specs by plugin type; a third-party plugin whose hook raises is dropped as broken."""
        collected: dict[str, list[Entry]] = {t: [] for t in PLUGIN_TYPES}
        seen: dict[tuple[str, str], Entry] = {}  # (plugin type, canonical qualified name) -> entry
        plugins = [(n, p) for n, p in pm.list_name_plugin() if p is not None]  # registration order
        for plugin_name, plugin in plugins:
            others = [p for _, p in plugins if p is not plugin]
            try:
                found = self._call(pm, plugin_name, plugin, others)
                for entry in found:
                    key = (entry.plugin_type, canonical(entry.qualified_name))
                    if key in seen:
                        raise PluginError(f"{entry.plugin_type} {entry.spec.name!r} is registered twice: by plugin "
                                          f"{seen[key].plugin!r} ({seen[key].distribution}) and by plugin "
                                          f"{plugin_name!r} ({entry.distribution})")
                    seen[key] = entry
            except Exception as exc:
                if plugin_name not in self._origins:
                    raise  # built-ins and in-process plugins fail at once
                self._broken(plugin_name, str(exc))
                seen = {k: e for k, e in seen.items() if e.plugin != plugin_name}
                continue
            for entry in found:
                collected[entry.plugin_type].append(entry)
        return {t: self._name(t, entries) for t, entries in collected.items()}

    def _name(self, plugin_type: str, entries: list[Entry]) -> list[Entry]:
        """Decide who holds each bare name (see the module docstring); warn once per shared name."""
        claims: dict[str, list[Entry]] = {}
        for entry in entries:
            claims.setdefault(entry.spec.name, []).append(entry)
        out: list[Entry] = []
        for name, claimants in claims.items():
            own = [e for e in claimants if e.plugin not in self._origins]  # built-in or in-process
            third = sorted((e for e in claimants if e.plugin in self._origins), key=lambda e: e.qualified_name)
            if len(own) > 1:
                raise PluginError(f"{plugin_type} {name!r} is registered twice: by plugin {own[0].plugin!r} "
                                  f"({own[0].distribution}) and by plugin {own[1].plugin!r} ({own[1].distribution})")
            others, warning = ", ".join(e.qualified_name for e in third), ""
            if own and third:
                warning = (f"{plugin_type} {name!r} of {others} is shadowed by {own[0].qualified_name}, which keeps "
                           f"the bare name: ask for {' or '.join(e.qualified_name for e in third)}")
                third = [replace(e, status="shadowed", shadowed_by=own[0].qualified_name) for e in third]
            elif len(third) > 1:
                warning = f"{plugin_type} {name!r} is registered by {len(third)} packages; ask for one of {others}"
                third = [replace(e, status="ambiguous") for e in third]
            if warning and warning not in self._warned:  # once per process, not per rebuild
                self._warned.add(warning)
                log.warning("%s", warning)
            out += own + third
        return out

    def _ensure(self) -> dict[str, list[Entry]]:
        with self._lock:
            pm = self.plugin_manager()
            if self._entries is None:
                entries = self._collect(pm)
                self._names = {t: {**{canonical(e.qualifier) + ":" + e.spec.name: e for e in es},
                                   **{e.spec.name: e for e in es if not e.status}} for t, es in entries.items()}
                self._entries = entries
            return self._entries

    def entry(self, plugin_type: str, name: str) -> Entry:
        """The entry ``name`` selects (bare or ``DIST:NAME``); :class:`PluginError` for an ambiguous bare
        name (listing the qualified ones) and for an unknown one (listing the available names)."""
        entries = self._ensure()[plugin_type]
        qualifier, colon, bare = name.rpartition(":")
        found = self._names[plugin_type].get(f"{canonical(qualifier)}:{bare}" if colon else name)
        if found is not None:
            return found
        if shared := [e.qualified_name for e in entries if e.status == "ambiguous" and e.spec.name == name]:
            raise PluginError(f"{plugin_type} {name!r} is registered by {len(shared)} packages; ask for one of "
                              f"{', '.join(shared)}")
        available = ", ".join(sorted(e.name for e in entries)) or "(none)"
        broken = [p.plugin for p in self._problems.values() if p.status == "broken"]
        hint = f" (broken plugins, see trainforge plugins: {', '.join(broken)})" if broken else ""
        raise PluginError(f"unknown {plugin_type} {name!r}; available: {available} (each also as "
                          f"DISTRIBUTION:NAME, e.g. {BUILTIN_DISTRIBUTION}:NAME for a built-in){hint}")

    def entries(self, plugin_type: str | None = None) -> list[Entry]:
        """Registered entries (shadowed and ambiguous ones included), sorted by plugin type then name."""
        reg = self._ensure()
        types = [plugin_type] if plugin_type else list(PLUGIN_TYPES)
        return [e for t in types for e in sorted(reg[t], key=lambda e: (e.spec.name, e.status, e.qualifier))]

    def problems(self) -> list[Problem]:
        """Third-party plugins that are broken or register nothing, in the order they were found."""
        self._ensure()
        return list(self._problems.values())

    def register_plugin(self, plugin: object, name: str | None = None) -> str:
        """Register an in-process plugin object (a module or class with hookimpls); specs are collected again."""
        pm = self.plugin_manager()
        with self._lock:
            try:
                plugin_name = pm.register(plugin, name=name)
                try:
                    pm.check_pending()
                except pluggy.PluginValidationError:
                    pm.unregister(plugin)  # leave nothing half-registered behind
                    raise
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"plugin {name or plugin!r}: {exc}") from exc
            self._entries = None
            return plugin_name

    def unregister_plugin(self, name: str) -> None:
        """Unregister a plugin registered with :meth:`register_plugin`."""
        with self._lock:
            self.plugin_manager().unregister(name=name)
            self._entries = None

    def reset(self) -> None:
        """Forget loaded plugins and specs (tests, or after installing a package at run time)."""
        with self._lock:
            self._clear()


#: the process's plugin registry; the functions below are its public face (``trainforge.manager.get``, ...)
REGISTRY = PluginRegistry()
get_plugin_manager = REGISTRY.plugin_manager
entry = REGISTRY.entry
entries = REGISTRY.entries
problems = REGISTRY.problems
register_plugin = REGISTRY.register_plugin
unregister_plugin = REGISTRY.unregister_plugin
reset = REGISTRY.reset


def get(plugin_type: str, name: str) -> Any:
    """The spec of ``plugin_type`` (``"model"``, ``"dataset"``, ...) that ``name`` selects (bare or
    ``DIST:NAME``); :class:`PluginError` for an unknown or ambiguous name (see :meth:`PluginRegistry.entry`)."""
    return REGISTRY.entry(plugin_type, name).spec


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
