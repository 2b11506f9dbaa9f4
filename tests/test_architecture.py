"""The package's shape: no module imports itself back through others, none imports another module's private
(``_name``) objects (function-level imports count too: a cycle hidden inside a function is still one), and no
file or function grows past what a reader takes in at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unlearn"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported module, imported object or None) for every import of a module of the package in ``path``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "unlearn":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub, None) if sub in modules else (target, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "unlearn":
                    yield alias.name, None


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        for target, obj in _imports(name, path, modules):
            if target in modules and target != name:
                edges[name].add(target)
            if obj and obj.startswith("_") and not obj.startswith("__"):
                private.append(f"{name} imports {target}.{obj}")
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_package():
    edges, _ = _graph()
    assert {"unlearn.api", "unlearn.cli", "unlearn.pipeline.run", "unlearn.methods.context"} <= set(edges)
    assert "unlearn.pipeline.run" in edges["unlearn.api"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = _cycles(_graph()[0])
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    _, private = _graph()
    assert not private, "\n".join(private)


@pytest.mark.parametrize("module", ["unlearn", "unlearn.api", "unlearn.cli"])
def test_public_modules_import(module):
    __import__(module)


MAX_FILE_LINES, MAX_FUNCTION_LINES = 450, 80


def _long_functions(source: str, limit: int) -> list[str]:
    """``name (n lines)`` of every function or method in ``source`` longer than ``limit`` lines (its signature
    and body, not its decorators)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                found.append(f"{node.name} ({n} lines)")
    return found


def test_the_length_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    assert _long_functions(f"@decorated\ndef f():\n{body}\n", 80) == ["f (81 lines)"]
    assert _long_functions(f"def f():\n{body}\n", 81) == []


def test_no_long_file_or_function():
    problems = []
    for name, path in sorted(_modules().items()):
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > MAX_FILE_LINES:
            problems.append(f"{name}: {len(source.splitlines())} lines")
        problems += [f"{name}.{f}" for f in _long_functions(source, MAX_FUNCTION_LINES)]
    assert not problems, "split these: " + "; ".join(problems)
