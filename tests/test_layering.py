"""The import graph of src/meshlib, read with ast: no cycle between modules or between
packages, a pure core, and gRPC built on the pinned adapter API only."""

from __future__ import annotations

import ast
from pathlib import Path

import meshlib

ROOT = Path(meshlib.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """Every meshlib module ``module`` imports, anywhere in it (lazy and typing-only too)."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join([*base, node.module] if node.module else base)
            names = [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]
        out.update(name for name in names if name in MODULES and name != module)
    return out


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_imports_itself_round_about() -> None:
    assert _cycles(GRAPH) == []


def test_no_two_packages_import_each_other() -> None:
    units: dict[str, set[str]] = {}
    for module, imported in GRAPH.items():
        for other in imported:
            if _unit(module) != _unit(other) and module != "meshlib":
                units.setdefault(_unit(module), set()).add(_unit(other))
    assert _cycles(units) == []


def test_the_core_is_pure() -> None:
    """No sockets, no event loop, no HTTP or gRPC library in meshlib.core (STYLE.md)."""
    forbidden = {
        "socket",
        "asyncio",
        "httpx",
        "httpcore",
        "grpc",
        "uvicorn",
        "starlette",
        "ssl",
    }  # locks are fine: no I/O
    for module, path in MODULES.items():
        if not module.startswith("meshlib.core"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert not names & forbidden, f"{module} imports {names & forbidden}"
        assert not any(
            imp.split(".")[1] not in ("core", "policy", "errors", "peer", "registry", "names")
            for imp in GRAPH[module]
            if imp != "meshlib"
        ), f"{module}: {GRAPH[module]}"


def test_grpc_is_built_on_the_adapter_api_alone() -> None:
    for module in MODULES:
        if module.startswith("meshlib.grpc"):
            outside = {m for m in GRAPH[module] if not m.startswith("meshlib.grpc")}
            assert outside <= {"meshlib.adapter"}, f"{module} imports {outside}"
