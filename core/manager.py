"""Plugin loading and the registries of specs.

Built-in plugins (``DEFAULT_PLUGINS``) and third-party packages (entry-point group ``trainforge``)
register through the same hooks. Loading happens lazily, once. Environment switches:

- ``TRAINFORGE_LOAD_PLUGINS``: comma-separated entry-point names or distributions to load (an
  allow-list; empty string loads none). Built-ins always load unless blocked.
- ``TRAINFORGE_BLOCK_PLUGINS``: comma-separated plugin names to block (built-in module paths such as
  ``trainforge.plugins.models``, or entry-point names).
- ``TRAINFORGE_TRACE_PLUGINS=1``: log every hook call at INFO level.
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


_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_registry: dict[str, dict[str, Entry]] | None = None


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 distribution-name normalization


def _allowed_entrypoints(allow: list[str]) -> list[str]:
    """Entry-point names of the allow-list: the names given plus every entry point of a named distribution."""
    if not allow:
        return []
    from importlib import metadata

    wanted, names = {_canonical(a) for a in allow}, list(allow)
    for dist in metadata.distributions():
        if _canonical(dist.metadata["Name"] or "") in wanted:
            names += [ep.name for ep in dist.entry_points if ep.group == GROUP and ep.name not in names]
    return names


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    allow = _env_list("TRAINFORGE_LOAD_PLUGINS")
    try:
        if allow is None:
            pm.load_setuptools_entrypoints(GROUP)
        for name in _allowed_entrypoints(allow or []):
            pm.load_setuptools_entrypoints(GROUP, name=name)
    except Exception as exc:  # a broken third-party package must say which one it is
        raise PluginError(f"a plugin of entry-point group {GROUP!r} failed to load: {exc!r}") from exc


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
        for name in _env_list("TRAINFORGE_BLOCK_PLUGINS") or []:
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
    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            return dist.project_name, dist.version
    if plugin_name.startswith("trainforge."):
        from trainforge import __version__

        return "trainforge", __version__
    return "(local)", ""


def _collect(pm: pluggy.PluginManager) -> dict[str, dict[str, Entry]]:
    registry: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
    for kind, (hook_name, spec_cls) in KINDS.items():
        caller = getattr(pm.hook, hook_name)
        # Each implementation is called on its own so every spec knows the plugin that registered it.
        for impl in reversed(caller.get_hookimpls()):
            distribution, version = _origin(pm, impl.plugin, impl.plugin_name)

            def register(spec: Any, _impl=impl, _dist=distribution, _ver=version, kind=kind, hook_name=hook_name,
                         spec_cls=spec_cls) -> None:
                if not isinstance(spec, spec_cls):
                    raise PluginError(
                        f"plugin {_impl.plugin_name!r} registered {type(spec).__name__} through "
                        f"{hook_name}; expected {spec_cls.__name__}"
                    )
                previous = registry[kind].get(spec.name)
                if previous is not None:
                    raise PluginError(
                        f"{kind} {spec.name!r} is registered twice: by plugin {previous.plugin!r} "
                        f"({previous.distribution}) and by plugin {_impl.plugin_name!r} ({_dist})"
                    )
                registry[kind][spec.name] = Entry(kind, spec, _impl.plugin_name, _dist, _ver)

            if pm.trace.root._writer is not None:  # noqa: SLF001 - honour TRAINFORGE_TRACE_PLUGINS
                log.info("pluggy: calling %s of %s", hook_name, impl.plugin_name)
            impl.function(register=register)
    return registry


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
    if name not in entries:
        available = ", ".join(sorted(entries)) or "(none)"
        raise PluginError(f"unknown {kind} {name!r}; available: {available}")
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
