"""The folder tree is the architecture: each subpackage one idea, imports flowing one way.

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import sdlib

PACKAGE = Path(sdlib.__file__).parent

# Bottom to top: a package may import only itself and the packages before it.
LAYERS = (
    "execution",
    "data",
    "prompting",
    "runs",
    "generation",
    "training",
    "stages",
    "study",
    "workbench",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The sdlib modules ``path`` imports, resolved to module names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sdlib.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("sdlib"):
                continue
            for alias in node.names:  # `from sdlib.x import y` may name the module sdlib.x.y
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return {name for name in found if name != module}


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def test_every_module_lives_in_a_layer():
    loose = [m for m in _graph() if m != "sdlib" and _layer(m) < 0]
    assert not loose, f"modules outside the subpackages {LAYERS}: {loose}"
    assert sorted(
        p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"
    ) == sorted(LAYERS)


def test_imports_flow_from_top_to_bottom_only():
    upward = [
        f"{source} imports {target}"
        for source, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(source)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_no_import_cycles_between_modules():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_imports():
    graph = _graph()
    # data.benchmarks computes expected outputs in the sandbox from inside a function
    assert "sdlib.execution.sandbox" in graph["sdlib.data.benchmarks"]
