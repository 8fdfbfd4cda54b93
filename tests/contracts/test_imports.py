"""The import structure of both packages: every module imports on its own, the import graph (every import
statement, function-level ones included) has no cycle, and vdt_runtime never imports vdt_export or torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("vdt_runtime", "vdt_export")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of both packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every absolute module name an import statement in `path` names (relative imports resolved; `from m import
    x` names m.x when that is a module of ours, else m; a package's parent is not counted)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            subs = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(subs if len(subs) == len(node.names) else subs | {base})
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (itself excluded)."""
    return {name: {m for m in _imports(name, path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None, f"import cycle: {' -> '.join(_cycle(_graph()))}"


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_imports_and_function_level_imports_are_edges():
    graph = _graph()
    assert "vdt_export.models" in graph["vdt_export.checkpoint"]  # from .models import ...
    assert "vdt_runtime.samplers.ddim" in graph["vdt_runtime.samplers"]  # from vdt_runtime.samplers import ddim
    assert "vdt_export.verify" in graph["vdt_export.cli"]  # inside a function


def test_the_runtime_never_imports_the_exporter_or_torch():
    for name, path in MODULES.items():
        if name.startswith("vdt_runtime"):
            roots = {m.split(".")[0] for m in _imports(name, path)}
            assert not roots & {"vdt_export", "torch"}, f"{name} imports {sorted(roots & {'vdt_export', 'torch'})}"


@pytest.mark.slow
def test_every_module_imports_alone():
    """Each module in a fresh interpreter, so none depends on another having been imported first (a cycle shows
    here as a partially initialised module)."""
    def run(name: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        return name, proc.returncode, proc.stderr.strip().splitlines()[-1:] and proc.stderr.strip().splitlines()[-1]

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [(n, err) for n, rc, err in pool.map(run, sorted(MODULES)) if rc != 0]
    assert not failed, f"modules that fail to import alone: {failed}"
