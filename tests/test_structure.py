"""The code's shape holds: imports flow one way, and ``@process`` keeps its signature.

The import graph is read from the source (every ``import``, also inside functions and
under ``TYPE_CHECKING``), so a cycle cannot hide behind a late import. The typing check
runs mypy on a small user module, as a user's type checker would see procstatus.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "procstatus"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The procstatus modules ``path`` imports, wherever the import statement stands."""
    found: set[str] = set()
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # "from a import b": the module a.b where it is one, else a name in module a.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            # The longest known module the name points into (a module, or a name in one).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, known) for p in paths}
    # A package's __init__ that only re-exports lazily (PEP 562) is the public face, not
    # a layer: importing "procstatus" from inside it is importing the package itself.
    for edges in graph.values():
        edges.discard("procstatus")
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycle_not_even_through_late_imports():
    graph = import_graph()
    assert "procstatus.runner" in graph and "procstatus.endings" in graph["procstatus.runner"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_modules_below_the_wiring_do_not_import_celery():
    # hooks.py is all the Celery wiring; the lifecycle can run and be tested without it.
    wiring = {"hooks.py", "testing.py"}
    for path in PACKAGE.glob("*.py"):
        if path.name in wiring:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "celery":
                # Allowed only for annotations.
                assert _under_type_checking(tree, node), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "celery" for a in node.names), path.name


def _under_type_checking(tree: ast.AST, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            if any(child is target for child in ast.walk(node)):
                return True
    return False


@pytest.mark.timeout(300)
def test_a_decorated_method_keeps_its_signature_for_type_checkers():
    case = ROOT / "tests" / "typing_cases" / "process_signatures.py"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--show-error-codes",
         "--config-file", "/dev/null", "--ignore-missing-imports", str(case)],
        cwd=ROOT, capture_output=True, text=True,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    expected_lines = {
        number for number, line in enumerate(case.read_text().splitlines(), start=1)
        if line.rstrip().endswith("# error expected")
    }
    error_lines = {int(line.split(":")[1]) for line in errors}
    assert error_lines == expected_lines, result.stdout
    assert any("arg-type" in line for line in errors), result.stdout
    assert any("call-arg" in line for line in errors), result.stdout
