"""The code flows one way: no module of tetra_magic imports, however indirectly, one that
imports it back, counting imports inside functions (which only hide a circle until they run);
the worker, which runs where tetra_magic is not installed, never imports tetra_magic; and the
runtime, shipped to any worker as source, imports nothing that worker may lack."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tetra_magic", "worker")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imported(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The modules of ours that `path` imports anywhere in it: `from a import b` counts as
    a.b where that is a module, else as a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t in known}
    return found - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(path, name, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for after in sorted(edges[node]):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                found.append(sorted([node, *group]))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_in_tetra_magic_or_the_worker() -> None:
    assert circles(graph()) == []


def test_the_worker_never_imports_tetra_magic() -> None:
    edges = graph()
    leaks = {
        name: sorted(t for t in targets if t.startswith("tetra_magic"))
        for name, targets in edges.items()
        if name.startswith("worker")
    }
    assert {name: found for name, found in leaks.items() if found} == {}


def test_the_graph_sees_imports_inside_functions() -> None:
    """The check itself: a function-level import is an edge, and a circle is found."""
    edges = graph()
    assert "tetra_magic.magic" in edges["tetra_magic"]  # inside load_ipython_extension
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


RUNTIME = ROOT / "tetra_magic" / "runtime"
# What a cell may bring to the worker, and the runtime uses where it is there: imported only
# inside the functions that use it, so that the runtime itself loads without it.
OPTIONAL_ON_THE_WORKER = {"IPython", "traitlets", "matplotlib", "plotly", "comm"}


def runtime_imports(source: str) -> list[tuple[str, bool]]:
    """(what, inside a function) for each import in `source`: the top-level package an
    absolute import names, or the dots of a relative one."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, inside: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name.partition(".")[0], inside) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            top = "." * node.level if node.level else (node.module or "").partition(".")[0]
            found.append((top, inside))
        inside = inside or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(source), False)
    return found


def test_the_runtime_imports_only_the_stdlib_cloudpickle_and_itself() -> None:
    """At module level: the standard library, cloudpickle (every worker that loads a request's
    arguments has it) and the runtime's own modules, by relative import from the same package;
    inside functions, also the packages a cell may bring. Nothing of tetra_magic or the worker
    by name: on the worker the package is `tetra_runtime`, and neither of those exists."""
    stdlib = set(sys.stdlib_module_names)
    wrong = {}
    for path in sorted(RUNTIME.glob("*.py")):
        bad = [
            what
            for what, inside in runtime_imports(path.read_text())
            if what not in stdlib | {"cloudpickle", "."}
            and not (inside and what in OPTIONAL_ON_THE_WORKER)
        ]
        if bad:
            wrong[path.name] = bad
    assert wrong == {}


def test_the_runtime_rule_sees_what_it_forbids() -> None:
    """The check itself: a package at module level, a relative import out of the package, and
    an optional package at module level are found; the same package inside a function is not."""
    probe = "import numpy\nfrom .. import x\nimport IPython\ndef f():\n    import IPython\n"
    assert runtime_imports(probe) == [
        ("numpy", False),
        ("..", False),
        ("IPython", False),
        ("IPython", True),
    ]


# What RunPod's code may not know: the notebook (IPython), the cell's options and where it
# runs (options, targets, endpoint_choice), nor any other side of a cell.
# (Modules and folders of tetra_magic, by name.)
NOT_FOR_CLOUD = {"options", "targets", "endpoint_choice", "magic", "run", "commands"}
NOT_FOR_CLOUD |= {"cell", "job", "session", "view"}


def reached(edges: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every module of ours it imports, however indirectly."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges[name])
    return seen


def test_the_cloud_package_knows_no_notebook() -> None:
    """tetra_magic/cloud/ and all it imports (inside functions too) import neither IPython nor
    the modules that know a cell: it raises its own errors, which the magic turns into the
    notebook's."""
    edges, known = graph(), modules()
    wrong = {}
    for name in sorted(n for n in edges if n.startswith("tetra_magic.cloud")):
        closure = reached(edges, name)
        ours = sorted(m for m in closure if m.partition(".")[2].partition(".")[0] in NOT_FOR_CLOUD)
        ipython = sorted(
            m
            for m in closure
            if any(top == "IPython" for top, _ in runtime_imports(known[m].read_text()))
        )
        if ours or ipython:
            wrong[name] = ours + ipython
    assert wrong == {}


def imports_ipython(name: str) -> bool:
    source = modules()[name].read_text()
    return any(top == "IPython" for top, _ in runtime_imports(source))


def test_the_cloud_rule_sees_what_it_forbids() -> None:
    """The check itself: from the magic, the rule would find options and IPython."""
    closure = reached(graph(), "tetra_magic.magic")
    assert "tetra_magic.options" in closure and imports_ipython("tetra_magic.options")
