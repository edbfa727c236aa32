"""The package's import graph: no cycles, and imports only point down the layers.

The layers are the ones ``docs/design.rst`` describes.  The graph is read
from the source (AST), imports inside functions included; only imports
under ``if typing.TYPE_CHECKING:`` are left out, as they never run.
"""

from __future__ import annotations

import ast
import pathlib

import divak

ROOT = pathlib.Path(divak.__file__).parent

#: Module or package (first two name parts) -> layer; higher may import lower.
LAYERS = {
    "divak.semconv": 1,
    "divak.redaction": 1,
    "divak.settings": 1,
    "divak.context": 1,
    "divak.version": 1,
    "divak.logs": 2,
    "divak.propagation": 3,
    "divak.export": 3,
    "divak.metrics": 3,
    "divak.tracing": 4,
    "divak.errors": 4,
    "divak.client": 4,
    "divak.debug": 4,
    "divak.lifecycle": 5,
    "divak.integrations": 5,
    "divak.testing": 5,
    "divak.cli": 5,
    "divak.__main__": 6,
    "divak": 6,
    "divak.api": 6,
    "divak.app": 6,
    "divak.runner": 6,
    "divak.mixins": 6,
    "divak.log": 6,
    "divak.logging": 6,
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(
                id(n) for statement in node.body for n in ast.walk(statement)
            )
    return skipped


def imported(path: pathlib.Path, name: str, modules: set[str]) -> set[str]:
    """The divak modules *name* imports (a submodule where one is named)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(
                p for p in (base if node.level else "", node.module or "") if p
            )
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in modules else module)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imported(path, name, set(paths)) for name, path in paths.items()}


def layer(name: str) -> int:
    if name in LAYERS:
        return LAYERS[name]
    return LAYERS[".".join(name.split(".")[:2])]


def test_every_module_has_a_layer() -> None:
    assert [
        name
        for name in graph()
        if name not in LAYERS and ".".join(name.split(".")[:2]) not in LAYERS
    ] == []


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph().items()
        for target in sorted(targets)
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)
    assert cycles == []


def test_the_checks_see_function_level_imports(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from divak.tracing import recorder\n")
    assert imported(source, "divak.semconv", {"divak.tracing.recorder"}) == {
        "divak.tracing.recorder"
    }


def test_at_most_twelve_top_level_plain_modules() -> None:
    plain = sorted(p.stem for p in ROOT.glob("*.py") if not p.stem.startswith("__"))
    assert len(plain) <= 12, plain
