"""Every hook is documented in docs/plugins.md and implemented by a plugin in some test (datasette's
``test_plugin_hooks_are_documented``), and the spec fields users fill in are documented too."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import trainforge
from trainforge import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins.md"
SPEC_CLASSES = ("ModelSpec", "OptimizerSpec", "DatasetSpec", "SchedulerSpec", "CallbackSpec", "TaskSpec",
                "ArrayData")


def hook_names() -> list[str]:
    """The hooks trainforge declares (functions marked with ``@hookspec``)."""
    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "trainforge_spec"))


def signature_line(name: str) -> str:
    """``def register_models(register: Callable[[ModelSpec], None]) -> None`` from the hookspec itself."""
    return f"def {name}{inspect.signature(getattr(hookspecs, name))}".replace("'", "")


def undocumented(hooks: list[str], text: str) -> list[str]:
    """Hooks without a ``### `name(args)``` heading or without their exact signature in ``text``."""
    missing = []
    for name in hooks:
        args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        if f"### `{name}({args})`" not in text or signature_line(name) not in text:
            missing.append(name)
    return missing


def unexercised(hooks: list[str], sources: dict[str, str]) -> list[str]:
    """Hooks that no test source implements with ``@hookimpl`` / ``@trainforge.hookimpl``."""
    return [name for name in hooks
            if not any(re.search(rf"@(trainforge\.)?hookimpl\s*\n\s*def {name}\(", src) for src in sources.values())]


def test_there_are_hooks_to_check():
    hooks = hook_names()
    assert {"register_models", "register_datasets", "register_tasks", "register_callbacks"} <= set(hooks)


def test_every_hook_is_documented_with_its_signature():
    assert undocumented(hook_names(), DOCS.read_text()) == []


def test_every_hook_is_exercised_by_a_test_plugin():
    sources = {p.name: p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name}
    assert unexercised(hook_names(), sources) == []


def test_the_checks_can_fail():
    text = DOCS.read_text()
    hooks = hook_names()
    stripped = text.replace("### `register_tasks(register)`", "### register tasks")
    assert undocumented(hooks, stripped) == ["register_tasks"]
    wrong_signature = text.replace(signature_line("register_models"), "def register_models(register)")
    assert undocumented(hooks, wrong_signature) == ["register_models"]
    assert unexercised(["register_models"], {"x": "@trainforge.hookimpl\ndef register_datasets(register):"}) \
        == ["register_models"]


def test_spec_fields_are_documented():
    text = DOCS.read_text()
    missing = [f"{cls}.{f.name}" for cls in SPEC_CLASSES for f in dataclasses.fields(getattr(trainforge, cls))
               if f"`{f.name}`" not in text]
    assert missing == []


def test_publishing_and_environment_switches_are_documented():
    text = DOCS.read_text()
    for needle in ("[project.entry-points.trainforge]", "TRAINFORGE_LOAD_PLUGINS", "TRAINFORGE_BLOCK_PLUGINS",
                   "TRAINFORGE_TRACE_PLUGINS", "search_space", "## Testing a plugin"):
        assert needle in text, needle
    assert "docs/plugins.md" in (ROOT / "README.md").read_text()
