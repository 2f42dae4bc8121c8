"""The house stays as built: every module imports only from its own floor or the floors below it, never a
private name of another module, targets never reach into each other, and no import circle closes.

Floors, from the ground up: core → graph → targets → validation → exporter → bench (../shared/STYLE.md).
Imports inside functions count: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import re
import sys
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = ("core", "graph", "targets", "validation", "exporter", "bench")
# Runtime names as string literals: outside targets/ only user-facing defaults may hold one (see the test).
RUNTIME_LITERAL = re.compile(r"""["'](tflite|ncnn|coreml|onnx)["']""")


def _modules() -> dict[str, Path]:
    modules = {}
    for floor in FLOORS:
        for path in sorted((REPO / floor).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in MODULES:  # `from targets import onnx` imports a module, not a name
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((node.module, alias.name, node.lineno))
    return found


def _floor(module: str) -> int | None:
    top = module.split(".")[0]
    return FLOORS.index(top) if top in FLOORS else None


def _ours(module: str) -> bool:
    return _floor(module) is not None


def _edges() -> dict[str, set[str]]:
    return {module: {imported for imported, _, _ in _imports(module, path) if imported in MODULES}
            for module, path in MODULES.items()}


def test_no_module_imports_from_a_floor_above_its_own():
    upward = [f"{module} ({path.relative_to(REPO)}:{line}) imports {imported}"
              for module, path in MODULES.items() for imported, _, line in _imports(module, path)
              if _ours(imported) and _floor(imported) > _floor(module)]
    assert not upward, "imports that run up the house:\n" + "\n".join(upward)


def test_no_module_imports_a_private_name_of_another_module():
    private = []
    for module, path in MODULES.items():
        for imported, name, line in _imports(module, path):
            if not _ours(imported) or imported == module:
                continue
            hidden = [part for part in imported.split(".") if part.startswith("_") and part != "__main__"]
            if hidden or (name is not None and name.startswith("_")):
                private.append(f"{path.relative_to(REPO)}:{line} imports {imported}{'.' + name if name else ''}")
    assert not private, "private names used across modules:\n" + "\n".join(private)


def test_targets_never_import_each_other():
    """One folder per runtime: what two runtimes share lives a floor below (core, graph), not in either."""
    crossing = []
    for module, path in MODULES.items():
        parts = module.split(".")
        if parts[0] != "targets" or len(parts) < 2:
            continue
        for imported, _, line in _imports(module, path):
            other = imported.split(".")
            if other[0] == "targets" and len(other) > 1 and other[1] != parts[1]:
                crossing.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not crossing, "\n".join(crossing)


def test_no_import_circle():
    edges = _edges()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
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
                circles.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_no_runtime_name_is_switched_on_outside_targets():
    """Outside targets/ a runtime's name appears only as a user-facing default; everything else asks the
    registry. Allowed: the default --target (a platform, not a runtime, so nothing here), and package names
    of tool versions."""
    allowed = {
        # The installed onnx *package*, whose version the manifest records (not the ONNX Runtime target).
        ("exporter/pipeline.py", '"onnx"'),
    }
    found = []
    for module, path in MODULES.items():
        if module.split(".")[0] in ("targets", "bench"):
            continue
        relative = path.relative_to(REPO).as_posix()
        for number, literal in _string_literals(path):
            if RUNTIME_LITERAL.fullmatch(literal) and (relative, literal.replace("'", '"')) not in allowed:
                found.append(f"{relative}:{number}: {literal}")
    assert not found, "runtime names outside targets/:\n" + "\n".join(found)


def _string_literals(path: Path):
    """(line, source text) of every plain string literal token: comments and docstrings' prose are not code."""
    with open(path, encoding="utf-8") as handle:
        for token in tokenize.generate_tokens(handle.readline):
            if token.type == tokenize.STRING:
                yield token.start[0], token.string


@pytest.mark.parametrize("floor", [floor for floor in FLOORS if floor != "bench"])  # bench/ holds scripts
def test_every_floor_is_a_package_with_a_docstring_saying_what_it_holds(floor):
    init = REPO / floor / "__init__.py"
    assert init.is_file() and ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """Negative control: a module of core importing validation, and two modules importing each other, are
    caught by the same functions the tests above run."""
    fake = {"core.fake": tmp_path / "fake.py", "core.other": tmp_path / "other.py"}
    fake["core.fake"].write_text("from validation.parity_runs import x\nimport core.other\n")
    fake["core.other"].write_text("import core.fake\n")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {**MODULES, **fake})
    upward = [imported for imported, _, _ in _imports("core.fake", fake["core.fake"])
              if _ours(imported) and _floor(imported) > _floor("core.fake")]
    assert upward == ["validation.parity_runs"]
    with pytest.raises(AssertionError, match="circle"):
        test_no_import_circle()
