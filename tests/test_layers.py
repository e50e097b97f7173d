"""The house's layering (README "Layout"): import-linter contracts kept, no import cycle.

Both checks read the installed layout (``trainforge`` = core/, with plugins/ and cli/ inside), assembled in
a temporary folder, because grimp reads packages from disk and the editable install maps plugins/ and
cli/ from outside core/. Imports inside functions and under ``TYPE_CHECKING`` count. Each check is also
run once on a copy with a planted violation, to show it can fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CYCLES = r"""
import json, sys
import grimp

graph = grimp.build_graph("trainforge", cache_dir=None)
modules = sorted(graph.modules)
edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
# Tarjan's strongly connected components (iterative); any component of 2+ modules is a cycle.
index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
for root in modules:
    if root in index:
        continue
    work = [(root, iter(edges[root]))]
    index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
    while work:
        node, it = work[-1]
        nxt = next(it, None)
        if nxt is not None:
            if nxt not in index:
                index[nxt] = low[nxt] = counter[0]; counter[0] += 1; stack.append(nxt); on.add(nxt)
                work.append((nxt, iter(edges.get(nxt, ()))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
            continue
        work.pop()
        if work:
            low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
            comp = []
            while True:
                m = stack.pop(); on.discard(m); comp.append(m)
                if m == node:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))
print(json.dumps({"modules": len(modules), "cycles": comps}))
"""


def _layout(tmp: Path) -> Path:
    view = tmp / "view"
    shutil.copytree(ROOT / "core", view / "trainforge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "plugins", view / "trainforge" / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "cli", view / "trainforge" / "cli", ignore=shutil.ignore_patterns("__pycache__"))
    return view


def _run(view: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=view, env={"PYTHONPATH": str(view), "PATH": str(Path(sys.executable).parent)},
                          capture_output=True, text=True, timeout=300)


def _cycles(view: Path) -> dict:
    proc = _run(view, sys.executable, "-c", CYCLES)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _lint(view: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).parent / "lint-imports"
    return _run(view, str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache")


def test_no_import_cycle_counting_imports_inside_functions(tmp_path):
    view = _layout(tmp_path)
    found = _cycles(view)
    assert found["modules"] > 50  # the whole package was read, plugins and CLI included
    assert found["cycles"] == []
    # Planted inside a function, the way most heavy imports are written: still a cycle.
    planted = view / "trainforge" / "training" / "trainer.py"
    planted.write_text(planted.read_text() + "\n\ndef _planted():\n    from trainforge.run import api  # noqa\n")
    (view / "trainforge" / "run" / "api.py").write_text(
        (view / "trainforge" / "run" / "api.py").read_text() + "\nfrom trainforge.training import trainer  # noqa\n")
    cycles = _cycles(view)["cycles"]
    assert any({"trainforge.run.api", "trainforge.training.trainer"} <= set(c) for c in cycles), cycles


def test_import_linter_contracts_are_kept_and_can_break(tmp_path):
    view = _layout(tmp_path)
    proc = _lint(view)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout
    # An upward import hidden in a function (the training wing reaching into tuning) breaks the layers,
    # and a built-in plugin reaching into a wing breaks the plugin contract.
    (view / "trainforge" / "training" / "data.py").write_text(
        (view / "trainforge" / "training" / "data.py").read_text()
        + "\n\ndef _planted():\n    from trainforge.tuning import space  # noqa\n")
    (view / "trainforge" / "plugins" / "models.py").write_text(
        (view / "trainforge" / "plugins" / "models.py").read_text()
        + "\n\ndef _planted():\n    from trainforge.training import trainer  # noqa\n")
    broken = _lint(view)
    assert broken.returncode != 0
    assert "1 kept, 2 broken" in broken.stdout, broken.stdout
    assert "trainforge.training.data -> trainforge.tuning.space" in broken.stdout
    assert "trainforge.plugins.models -> trainforge.training.trainer" in broken.stdout


def test_wings_say_what_they_own_and_root_stays_small():
    core = ROOT / "core"
    root_modules = sorted(p.name for p in core.glob("*.py"))
    assert len(root_modules) <= 12, root_modules
    for wing in ("training", "tracking", "exporting", "estimators", "run", "cv", "tuning"):
        doc = (core / wing / "__init__.py").read_text()
        assert doc.startswith('"""') and "Imports" in doc, wing
    for path in [*core.rglob("*.py"), *(ROOT / "plugins").glob("*.py"), *(ROOT / "cli").glob("*.py")]:
        assert len(path.read_text().splitlines()) <= 400, path


def _core_files_containing(needle: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py") if needle in p.read_text())


def test_one_home_each_for_sessions_metadata_and_checkpoint_paths():
    """onnxruntime sessions are opened in exporting/sessions.py, ONNX metadata written in exporting/metadata.py,
    and the checkpoint file names spelled in training/checkpoint.py only (docstrings aside)."""
    assert _core_files_containing("InferenceSession(") == ["core/exporting/sessions.py"]
    assert _core_files_containing("metadata_props.add(") == ["core/exporting/metadata.py"]
    assert _core_files_containing("custom_metadata_map") == ["core/exporting/metadata.py"]
    assert _core_files_containing('"TRAINFORGE_ORT_THREADS"') == []
    for name in ('"checkpoints/best.pt"', '"checkpoints/last.pt"', '/ "best.pt"', '"last.pt"'):
        assert _core_files_containing(name) == [], name


def test_tag_names_are_spelled_in_the_tags_module_only():
    """No string literal in core/ (docstrings aside) names a ``trainforge.*`` MLflow tag outside
    core/tracking/tags.py; module names (``"trainforge.estimators.kind"``) are not tags."""
    import ast
    import re

    tag_like = re.compile(r"trainforge\.[a-z_]+\Z")
    found = []
    for path in (ROOT / "core").rglob("*.py"):
        if path == ROOT / "core" / "tracking" / "tags.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and tag_like.match(node.value):
                module = node.value.split(".", 1)[1]
                if not ((ROOT / "core" / module).is_dir() or (ROOT / "core" / f"{module}.py").exists()
                        or module in ("plugins", "cli")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert found == []


def test_the_two_entry_points_stay_short():
    """``tune()`` and ``train()`` read top to bottom: each at most 60 lines (docstring included)."""
    import ast

    for path, name in (("core/tuning/tune.py", "tune"), ("core/run/api.py", "train")):
        tree = ast.parse((ROOT / path).read_text())
        (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        assert node.end_lineno - node.lineno + 1 <= 60, f"{path}: {name}() is {node.end_lineno - node.lineno + 1} lines"


def test_no_function_in_core_is_over_90_lines_or_10_parameters():
    """Every function and method in core/ fits on a screen: at most 90 lines (docstring included) and at most 10
    parameters (``self``/``cls`` not counted, ``*args``/``**kwargs`` counted once each)."""
    import ast

    too_big = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = node.args
            positional = [a.arg for a in (*args.posonlyargs, *args.args)]
            count = len(positional) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
            count -= bool(positional) and positional[0] in ("self", "cls")
            lines = node.end_lineno - node.lineno + 1
            if lines > 90 or count > 10:
                too_big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines, {count} parameters")
    assert not too_big, "\n".join(too_big)
