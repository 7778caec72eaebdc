"""The package's layers, pinned: each folder of dicom_node imports only from the folders above it
in the data flow (ARCHITECTURE.md, "Where the parts go"), no module imports itself back through
others, and only net/patches/ touches pynetdicom's or pydicom's private names.

Read from the source (every import, at module level or inside a function), not from what a
process happens to load, so a violation fails here before it shows as a cycle or a torch-laden
listener at run time."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dicom_node"

# Top to bottom: a folder may import from its own folder and the folders before it. The modules
# at the package root (errors, logs, process, counters, metrics_folder) are the bottom everyone
# stands on, and import nothing from the folders.
LAYERS = ["", "config", "storage", "net", "dicomweb", "results", "privacy", "pipelines", "flow", "notify",
          "monitoring", "web", "service", "tools", "cli"]
PATCHES = "dicom_node.net.patches"
THIRD_PARTY_INTERNALS = ("pynetdicom", "pydicom")
#: The standard library's documented names that start with an underscore.
STDLIB_PRIVATE = {"os._exit", "sys._getframe"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``name``, relative ones resolved; ``from P import m``
    counts as importing P.m where m is a module."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if _is_package(name) else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                yield node.lineno, full if full in MODULES else target


def _layer(name: str) -> int:
    parts = name.split(".")
    folder = parts[1] if len(parts) > 2 or (len(parts) == 2 and _is_package(name)) else ""
    return LAYERS.index(folder)


def _graph() -> dict[str, set[str]]:
    return {name: {target for _, target in _imports(name) if target in MODULES and target != name} for name in MODULES}


def test_every_folder_has_a_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), f"folders with no place in the layer order: {sorted(folders - set(LAYERS))}"


def test_imports_only_go_up_the_layers() -> None:
    climbing = []
    for name in MODULES:
        if name == "dicom_node":
            continue  # the package root names its public API lazily (strings, not imports)
        for line, target in _imports(name):
            if target in MODULES and target != "dicom_node" and _layer(target) > _layer(name):
                climbing.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}")
    assert not climbing, "imports that climb back up the data flow:\n" + "\n".join(climbing)


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if target.startswith(name + ".") or name.startswith(target + ".") and _is_package(target):
                continue  # a package and its own modules
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _our_private_names() -> set[str]:
    """Private attribute and method names our own code defines (self._x = ..., def _x, _x = ...)."""
    names: set[str] = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "ai").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def _private_uses(name: str, ours: set[str]) -> Iterator[str]:
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith(THIRD_PARTY_INTERNALS):
            private = [a.name for a in node.names if a.name.startswith("_")]
            if private or any(part.startswith("_") for part in (node.module or "").split(".")):
                yield f"line {node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(THIRD_PARTY_INTERNALS) and any(p.startswith("_") for p in alias.name.split(".")):
                    yield f"line {node.lineno}: import {alias.name}"
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and (owner.id in ("self", "cls") or f"{owner.id}.{node.attr}" in STDLIB_PRIVATE):
                continue
            if node.attr not in ours:
                yield f"line {node.lineno}: .{node.attr}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            owner, attr = node.args[0], node.args[1].value
            if attr.startswith("_") and not attr.startswith("__") and attr not in ours and \
                    not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                yield f"line {node.lineno}: {node.func.id}(..., {attr!r})"


def test_only_net_patches_touch_library_internals() -> None:
    """pynetdicom and pydicom internals (private modules, names and attributes) change in one
    place, each patch behind its version check; anywhere else a release could break them unseen."""
    ours = _our_private_names()
    found = []
    for name in MODULES:
        if name.startswith(PATCHES):
            continue
        found += [f"{MODULES[name].relative_to(ROOT)} {use}" for use in _private_uses(name, ours)]
    assert not found, "library internals used outside net/patches/:\n" + "\n".join(found)


@pytest.mark.parametrize("probe", ["climb", "cycle"])
def test_the_checks_see_a_violation(probe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a planted climb (storage importing web) and a planted cycle
    (storage.store importing storage.index, which imports store) are found."""
    store = "dicom_node.storage.store"
    planted = "from ..web import metrics\n" if probe == "climb" else "from . import index\n"
    original = _imports

    def with_plant(name: str) -> Iterator[tuple[int, str]]:
        yield from original(name)
        if name == store:
            yield 1, "dicom_node.web.metrics" if probe == "climb" else "dicom_node.storage.index"

    monkeypatch.setitem(globals(), "_imports", with_plant)
    check = test_imports_only_go_up_the_layers if probe == "climb" else test_no_import_cycles
    with pytest.raises(AssertionError):
        check()
    assert planted  # the text of what was planted, for the reader
