"""The package structure: one way only (search_spaces <- nas <- metaprune), no import circle, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "nas", "metaprune")
MAX_LINES = 400


def test_importing_every_module_of_nas_imports_nothing_of_metaprune() -> None:
    code = (
        "import pkgutil, sys, importlib, nas\n"
        "names = [m.name for m in pkgutil.walk_packages(nas.__path__, 'nas.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names), sorted(m for m in sys.modules if m.split('.')[0] == 'metaprune'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    count, found = done.stdout.split(" ", 1)
    assert int(count) >= 10 and found.strip() == "[]", done.stdout  # (all of nas was walked, ray_executor included)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every project module `path` imports, wherever the import statement is (TYPE_CHECKING blocks,
    function bodies): a circle hidden in either is still a circle."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base else [])])
            found |= {f"{base}.{alias.name}" for alias in node.names}  # the module itself, or (stripped later) its package
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:  # `from pkg import name` names a function, not a module
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_packages_import_one_way_and_no_module_imports_in_a_circle() -> None:
    graph = _graph()
    rank = {package: i for i, package in enumerate(PACKAGES)}
    upward = [(a, b) for a, targets in graph.items() for b in targets if rank[b.split(".")[0]] > rank[a.split(".")[0]]]
    assert not upward, f"imports against the direction search_spaces <- nas <- metaprune: {upward}"

    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target] if target in path else [*path, target]
            if target not in state and (circle := visit(target, [*path, target])):
                return circle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (circle := visit(start, [start])):
            raise AssertionError(f"import circle: {' -> '.join(circle)}")


def test_no_module_is_over_the_size_limit() -> None:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in files}
    over = {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert len(sizes) > 40 and not over, f"modules over {MAX_LINES} lines: {over}"
