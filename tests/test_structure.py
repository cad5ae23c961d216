"""The architecture as code: read every module's imports (module level and inside functions) and hold them to the
design's rules — a stage imports only the core, no module takes another module's `_private` names, no import circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The stage folders sit at the top of the repository but install as kerasport.<folder> (pyproject's package-dir).
STAGE_FOLDERS = ("train", "ingest", "export", "deploy", "parity", "serve")
APPLICATION = "kerasport.app"  # the wiring (CLI, `run`) may import every stage


def _module_files() -> dict[str, Path]:
    modules = {}
    for folder in ("kerasport", *STAGE_FOLDERS):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if folder != "kerasport":
                parts.insert(0, "kerasport")
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement in `module`, relative ones resolved."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if _is_package(module) else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [alias.name for alias in node.names]
            submodules = [f"{base}.{name}" for name in names if f"{base}.{name}" in MODULES]
            found.append((base, [name for name in names if f"{base}.{name}" not in MODULES]))
            found.extend((submodule, []) for submodule in submodules)
    return [(target, names) for target, names in found if target in MODULES]


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGE_FOLDERS:
        return parts[1]
    return None


def test_every_folder_is_read():
    assert {f"kerasport.{folder}" for folder in STAGE_FOLDERS} <= set(MODULES)
    assert {"kerasport.manifest", "kerasport.contract", APPLICATION} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_stage_imports_only_the_core(module):
    if module.startswith(APPLICATION):
        return
    own = _stage_of(module)
    foreign = sorted({target for target, _ in _imports(module)
                      if (_stage_of(target) not in (None, own)) or target.startswith(APPLICATION)})
    assert not foreign, f"{module} imports {foreign}; a stage may import only the core (kerasport.*)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_taken_from_another_module(module):
    taken = sorted({f"{target}.{name}" for target, names in _imports(module) for name in names
                    if name.startswith("_") and not name.startswith("__") and target != module})
    assert not taken, f"{module} imports private names {taken}; make what two modules share public in a third"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph = {module: sorted({target for target, _ in _imports(module) if target != module
                             and not (_is_package(target) and module.startswith(target + "."))})
             for module in MODULES}
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return components


def test_no_import_circles():
    assert _cycles() == [], "import circles (modules that import each other, directly or around a loop)"


def test_the_checks_see_a_planted_circle_and_a_private_import(tmp_path, monkeypatch):
    """The rules above are not vacuous: a module pair that breaks both is caught."""
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text("from kerasport.second import _hidden\n")
    second.write_text("def f():\n    from kerasport import first\n")
    monkeypatch.setitem(MODULES, "kerasport.first", first)
    monkeypatch.setitem(MODULES, "kerasport.second", second)
    assert ["kerasport.first", "kerasport.second"] in _cycles()
    assert ("kerasport.second", ["_hidden"]) in _imports("kerasport.first")
