"""The architecture as code: read every module's imports (module level and inside functions) and hold them to the
design's rules — a stage imports only the core, no module takes another module's `_private` names, no import circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kerasport.verdict import Verdict

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


# The words a verdict is spelled with; outside kerasport/verdict.py they may appear only as other vocabularies'
# names, each listed with its reason (as JUnit's own tag names are).
VERDICT_WORDS = {str(verdict) for verdict in Verdict} | {str(verdict).upper() for verdict in Verdict} | {
    Verdict.PASS.headline, Verdict.FAIL.headline}
OTHER_VOCABULARIES = {
    "kerasport.serve.metrics": "Triton's own inference-phase label names ('success', 'fail', ...)",
    "kerasport.serve.openapi": "Triton's own inference-phase label names, documented for /metrics",
}
# Keys of report records that happen to share a verdict's word: they name a field, not a verdict. JUnit's own tag
# names (the second argument of ElementTree's SubElement) are JUnit's vocabulary.
FIELD_NAMES = {"reference", "skipped", "error"}


def _verdict_literals(module: str) -> list[str]:
    tree = ast.parse(MODULES[module].read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    keys = {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys if key is not None}
    keys |= {id(node.slice) for node in ast.walk(tree) if isinstance(node, ast.Subscript)}
    keys |= {id(node.args[0]) for node in ast.walk(tree) if isinstance(node, ast.Call) and node.args
             and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop", "setdefault")}
    keys |= {id(node.left) for node in ast.walk(tree) if isinstance(node, ast.Compare)
             and isinstance(node.ops[0], (ast.In, ast.NotIn))}
    junit_tags = {id(constant) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and isinstance(node.func, ast.Attribute) and node.func.attr == "SubElement" and len(node.args) > 1
                  for constant in ast.walk(node.args[1])}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in VERDICT_WORDS
                and id(node) not in docstrings and id(node) not in junit_tags
                and not (id(node) in keys and node.value in FIELD_NAMES)):
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"kerasport.verdict"} - set(OTHER_VOCABULARIES)))
def test_verdicts_are_spelled_only_by_the_core(module):
    literals = _verdict_literals(module)
    assert not literals, f"{module} spells verdicts as string literals {literals}; use kerasport.verdict.Verdict"


def test_the_verdict_rule_sees_a_literal(tmp_path, monkeypatch):
    planted = tmp_path / "planted.py"
    planted.write_text('"""pass is fine in a docstring."""\nSTATE = {"reference": 1}\nOK = "pass"\n')
    monkeypatch.setitem(MODULES, "kerasport.planted", planted)
    assert _verdict_literals("kerasport.planted") == ["line 3: 'pass'"]
