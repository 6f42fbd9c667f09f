"""What a cell reads from the notebook, what it binds, and whether it ends in an expression.

The cell runs far from the notebook, so it only sees the globals we ship and only the names we
bring back return. Shipping too little breaks the cell; shipping too much costs bytes and can
fail on an unpicklable value the cell never touches. So "reads" means names loaded before the
cell has certainly bound them: a name bound only inside an `if`, loop, `match` or `try` may
still be read from the notebook afterwards, and names used inside functions, lambdas and
comprehensions count where they resolve to module globals (Python's own `symtable` decides that).

IPython syntax is analysed as what it runs: `%time stmt` as `stmt`, and `!cmd {expr} $name` as
a read of the names it interpolates, since IPython evaluates them in the cell's namespace.

The facts the worker needs of the cell's statements (its definitions, imports, `with` targets)
are found here too and travel in the spec: the worker parses the cell only to run it.
"""

from __future__ import annotations

import ast
import builtins
import re
import symtable
from collections.abc import Iterator
from dataclasses import dataclass, field

from tetra_magic.runtime.shell import expansion_fields

# Statements whose bindings hold on every path through them.
_DEFINITE = (
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Expr,
)
_NAMED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_COMPREHENSION_NODES = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_COMPREHENSIONS = ("listcomp", "setcomp", "dictcomp", "genexpr")
# A node that opens a scope of its own.
_Scope = (
    ast.FunctionDef
    | ast.AsyncFunctionDef
    | ast.ClassDef
    | ast.Lambda
    | ast.ListComp
    | ast.SetComp
    | ast.DictComp
    | ast.GeneratorExp
)
# A line IPython's transformer wrote for `%magic args` or `!cmd`, maybe after `x = `.
_MAGIC_LINE = re.compile(
    r"^(?P<head>\s*(?:[\w.\[\], ]+=\s*)?)get_ipython\(\)\."
    r"(?P<call>run_line_magic|system|getoutput)\((?P<args>.*)\)\s*$"
)
_STATEMENT_MAGICS = ("time", "timeit")
# Line magics whose line IPython expands ({expr}, $name) before running them, as the worker's
# shell does (runtime/shell.py): what they substitute is read from the notebook.
_EXPANDED_MAGICS = ("env", "set_env", "pip")


@dataclass(frozen=True)
class CellAnalysis:
    """The facts about one cell that decide what is shipped and what comes back."""

    source: str
    reads: frozenset[str]
    binds: frozenset[str]
    has_last_expr: bool
    # Names the cell may unbind (`del x`, `except ... as x`): absent afterwards means deleted.
    deletes: frozenset[str] = frozenset()
    # Builtin names it reads: notebook values where the notebook has shadowed them (`max = 3`).
    builtins_read: frozenset[str] = frozenset()
    # Its top-level def and class statements, {name: (source, first line)}: they come home
    # as source.
    defines: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Names `with ... as NAME` binds: closed when the block ends, so nobody misses them at home.
    with_targets: frozenset[str] = frozenset()
    # Names import statements bind: what the cell imported to use, not its results.
    imported: tuple[str, ...] = ()
    # `import a.b.c` without `as`: {"a": ("a.b.c",)}, imported at home too when `a` comes back.
    submodules: dict[str, tuple[str, ...]] = field(default_factory=dict)


def analyse(source: str, filename: str = "<tetra-cell>") -> CellAnalysis:
    """Analyse Python `source` (already transformed); raises SyntaxError as Python would,
    compiling it too: the parser accepts what only the compiler refuses ('return' outside a
    function, 'break' outside a loop), which the worker would otherwise report after a job."""
    tree = ast.parse(source, filename)
    try:
        compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError as exc:  # the compiler names no line text for a file it cannot read
        if exc.text is None and exc.lineno:
            exc.text = source.splitlines()[exc.lineno - 1] + "\n"
        raise
    seen = _as_python(source)
    try:
        seen_tree = ast.parse(seen, filename)
    except SyntaxError:  # a rewrite gone wrong must not stop a valid cell
        seen, seen_tree = source, tree
    table = symtable.symtable(seen, filename, "exec")
    nested = list(_nested_tables(table))
    cell = _Cell(nested)
    cell.block(seen_tree.body, set())
    body = tree.body
    has_last = bool(body) and isinstance(body[-1], ast.Expr) and not source.rstrip().endswith(";")
    builtin_names = set(dir(builtins))
    defines, with_targets, imported, submodules = _statement_facts(tree, source)
    return CellAnalysis(
        source=source,
        reads=frozenset(cell.reads - builtin_names),
        binds=frozenset(_module_bindings(table, nested)),
        has_last_expr=has_last,
        deletes=frozenset(cell.deletes | (cell.deleted_in_scopes & cell.declared_global)),
        builtins_read=frozenset(cell.reads & builtin_names),
        defines=defines,
        with_targets=with_targets,
        imported=imported,
        submodules=submodules,
    )


def _statement_facts(
    tree: ast.Module, source: str
) -> tuple[dict[str, tuple[str, int]], frozenset[str], tuple[str, ...], dict[str, tuple[str, ...]]]:
    """CellAnalysis' `defines`, `with_targets`, `imported` and `submodules`: what the cell's
    statements at its own level (outside functions and classes, in loops and branches too)
    define, bind with `with` and import."""
    lines = source.splitlines(True)
    defines = {
        node.name: ("".join(lines[_span(node).start - 1 : node.end_lineno]), _span(node).start)
        for node in tree.body
        if isinstance(node, _NAMED_SCOPES)
    }
    with_targets: set[str] = set()
    imported: list[str] = []
    submodules: dict[str, list[str]] = {}
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (*_NAMED_SCOPES, ast.Lambda)):
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, (ast.With, ast.AsyncWith)):
            targets = [item.optional_vars for item in node.items if item.optional_vars]
            with_targets.update(
                n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)
            )
        for alias in node.names if isinstance(node, (ast.Import, ast.ImportFrom)) else ():
            if alias.name != "*":
                imported.append(alias.asname or alias.name.split(".")[0])
            if isinstance(node, ast.Import) and alias.asname is None and "." in alias.name:
                submodules.setdefault(alias.name.partition(".")[0], []).append(alias.name)
    subs = {name: tuple(sorted(found)) for name, found in submodules.items()}
    return defines, frozenset(with_targets), tuple(sorted(imported)), subs


def _as_python(source: str) -> str:
    """`source` with each IPython magic or shell line replaced, for analysis only, by Python
    that reads and binds what it does; line numbers are kept."""
    return "\n".join(_line_as_python(line) for line in source.split("\n"))


def _line_as_python(line: str) -> str:
    match = _MAGIC_LINE.match(line)
    if match is None:
        return line
    try:
        args = ast.literal_eval(f"({match['args']},)")
    except (ValueError, SyntaxError):
        return line
    head, call = match["head"], match["call"]
    if call == "run_line_magic" and len(args) >= 2 and args[0] in _STATEMENT_MAGICS:
        return _statement_magic(head, _strip_options(str(args[1]))) or line
    if call in ("system", "getoutput") and args and isinstance(args[0], str):
        return _reading(head, args[0])
    if call == "run_line_magic" and len(args) >= 2 and args[0] in _EXPANDED_MAGICS:
        return _reading(head, str(args[1]))
    return line


def _reading(head: str, text: str) -> str:
    """Python that reads what IPython substitutes into `text` ({expr}, $name)."""
    fields = [f for f in expansion_fields(text) if _is_expression(f)]
    return f"{head}({''.join(f'{field}, ' for field in fields)})"


def _statement_magic(head: str, statement: str) -> str | None:
    """`x = %time expr` as `x = (expr)`, `%time stmt` as `stmt`; None if it is not Python."""
    if head.strip():
        return f"{head}({statement})" if _is_expression(statement) else None
    try:
        ast.parse(statement)
    except SyntaxError:
        return None
    return head + statement if "\n" not in statement else None


def _strip_options(line: str) -> str:
    """`-n 10 -r 3 f(x)` (timeit's options) -> `f(x)`."""
    return re.sub(r"^(\s*-\w+(\s+\d+)?)+\s+", "", line)


def _is_expression(text: str) -> bool:
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return True


class _Cell(ast.NodeVisitor):
    """One walk over the cell. Its own statements are taken in order, tracking the names
    certainly bound so far: a loop or `with` target is bound inside its body; bindings inside
    branches, loops and `try` are not certain after them. Inside functions, lambdas, classes
    and comprehensions, symtable decides what is read; the walk there only notes `global`
    declarations and `del`, and the `:=` targets that bind in the cell's scope."""

    def __init__(self, nested: list[symtable.SymbolTable]) -> None:
        self.nested = nested
        self.bound: set[str] = set()  # certainly bound so far, on this path
        self.stores: set[str] = set()  # bound by the statement being walked
        self.scopes: list[ast.AST] = []  # the nested scopes the walk is inside
        self.reads: set[str] = set()
        self.deletes: set[str] = set()  # `del`, `except ... as` in the cell's own scope
        self.deleted_in_scopes: set[str] = set()
        self.declared_global: set[str] = set()

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.stmt) and not self.scopes:
            getattr(self, f"statement_{type(node).__name__}", self.simple)(node)
        else:
            super().visit(node)

    def block(self, body: list[ast.stmt], bound: set[str]) -> None:
        outer, self.bound = self.bound, bound
        for stmt in body:
            self.visit(stmt)
        self.bound = outer

    def walk(self, node: ast.AST) -> set[str]:
        """Note what `node` reads (not yet bound); return the names it binds."""
        outer, self.stores = self.stores, set()
        ast.NodeVisitor.visit(self, node)
        stores, self.stores = self.stores, outer
        return stores

    # ------------------------------------------------------------ the cell's statements

    def simple(self, stmt: ast.stmt) -> None:
        stores = self.walk(stmt)
        if isinstance(stmt, _DEFINITE):
            self.bound |= stores

    def statement_For(self, stmt: ast.For | ast.AsyncFor) -> None:
        self.bound |= self.walk(stmt.iter)  # a walrus in the iterable always runs
        self.block(stmt.body, self.bound | self.walk(stmt.target))
        self.block(stmt.orelse, set(self.bound))

    def statement_With(self, stmt: ast.With | ast.AsyncWith) -> None:
        for item in stmt.items:
            self.bound |= self.walk(item.context_expr)
            if item.optional_vars is not None:
                self.bound |= self.walk(item.optional_vars)
        self.block(stmt.body, self.bound)

    def statement_If(self, stmt: ast.If | ast.While) -> None:
        self.bound |= self.walk(stmt.test)  # a walrus in the test always runs
        self.block(stmt.body, set(self.bound))
        self.block(stmt.orelse, set(self.bound))

    def statement_Try(self, stmt: ast.Try) -> None:
        self.block(stmt.body, set(self.bound))
        for handler in stmt.handlers:
            if handler.type:
                self.walk(handler.type)
            if handler.name:  # Python deletes it when the handler ends
                self.deletes.add(handler.name)
            self.block(handler.body, self.bound | ({handler.name} if handler.name else set()))
        self.block(stmt.orelse + stmt.finalbody, set(self.bound))

    def statement_Match(self, stmt: ast.Match) -> None:
        self.bound |= self.walk(stmt.subject)
        for case in stmt.cases:
            inside = self.bound | self.walk(case.pattern)
            outer, self.bound = self.bound, inside
            if case.guard:
                self.walk(case.guard)
            self.bound = outer
            self.block(case.body, set(inside))

    statement_AsyncFor = statement_For
    statement_AsyncWith = statement_With
    statement_While = statement_If
    statement_TryStar = statement_Try

    # ------------------------------------------------------------ names

    def read(self, name: str) -> None:
        if name not in self.bound:
            self.reads.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if self.scopes:
            return
        if isinstance(node.ctx, ast.Store):
            self.stores.add(node.id)
        else:
            self.read(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if not self.scopes and isinstance(node.target, ast.Name):
            self.read(node.target.id)  # `x += 1` reads x first
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        """`:=` binds in the cell's scope, from comprehensions too (`[y := f(v) for v in vs]`)."""
        if all(isinstance(s, _COMPREHENSION_NODES) for s in self.scopes):
            self.stores.add(node.target.id)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        if not self.scopes:
            self.stores |= {(a.asname or a.name).split(".")[0] for a in node.names}

    visit_ImportFrom = visit_Import

    def visit_Delete(self, node: ast.Delete) -> None:
        names = {t.id for t in node.targets if isinstance(t, ast.Name)}
        if self.scopes:
            self.deleted_in_scopes |= names
        else:
            self.deletes |= names
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.declared_global.update(node.names)

    def visit_match_capture(self, node: ast.MatchAs | ast.MatchStar | ast.MatchMapping) -> None:
        name = getattr(node, "name", None) or getattr(node, "rest", None)
        if name and not self.scopes:
            self.stores.add(name)
        self.generic_visit(node)

    visit_MatchAs = visit_MatchStar = visit_MatchMapping = visit_match_capture

    # ------------------------------------------------------------ nested scopes

    def visit_scope(self, node: _Scope) -> None:
        """A function, lambda, class or comprehension: what it evaluates where it stands
        (defaults, decorators, bases, a comprehension's first iterable) reads here; what its
        body reads from the cell, symtable says."""
        if not self.scopes:
            for part in _scope_outer_parts(node):
                self.visit(part)
            self.reads |= _reads_in_scopes(node, self.nested) - self.bound
            if isinstance(node, _NAMED_SCOPES):
                self.stores.add(node.name)
        self.scopes.append(node)
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_scope
    visit_Lambda = visit_ListComp = visit_SetComp = visit_DictComp = visit_scope
    visit_GeneratorExp = visit_scope


def _nested_tables(table: symtable.SymbolTable) -> Iterator[symtable.SymbolTable]:
    for child in table.get_children():
        yield child
        yield from _nested_tables(child)


def _span(node: ast.stmt | ast.expr) -> range:
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return range(start, (node.end_lineno or node.lineno) + 1)


def _reads_in_scopes(node: ast.stmt | ast.expr, nested: list[symtable.SymbolTable]) -> set[str]:
    """Module globals read by the scopes defined in `node`'s lines."""
    lines = _span(node)
    return {
        s.get_name()
        for table in nested
        if table.get_lineno() in lines
        for s in table.get_symbols()
        if _reads_global(table, s)
    }


def _reads_global(table: symtable.SymbolTable, symbol: symtable.Symbol) -> bool:
    """Whether a nested scope reads a module global; a comprehension's walrus target is a
    global it writes (`[y := f(v) for v in vs]`), not one it reads."""
    if not (symbol.is_global() and symbol.is_referenced()):
        return False
    return not (table.get_name() in _COMPREHENSIONS and symbol.is_assigned())


def _module_bindings(table: symtable.SymbolTable, nested: list[symtable.SymbolTable]) -> set[str]:
    """Every name the cell can bind in the notebook, `global` declarations included."""
    names = {
        s.get_name()
        for s in table.get_symbols()
        if s.is_assigned() or s.is_imported() or s.is_namespace()
    }
    for child in nested:
        names |= {
            s.get_name()
            for s in child.get_symbols()
            if s.is_declared_global() and (s.is_assigned() or s.is_imported())
        }
    return names


def _scope_outer_parts(scope: _Scope) -> list[ast.AST]:
    """The parts of a scope evaluated in the enclosing scope: defaults, decorators, bases,
    and a comprehension's first iterable."""
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        args = scope.args
        parts: list[ast.AST] = [*args.defaults, *(d for d in args.kw_defaults if d)]
        if not isinstance(scope, ast.Lambda):
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            annotations = [a.annotation for a in every if a is not None and a.annotation]
            parts += [
                *scope.decorator_list,
                *annotations,
                *([scope.returns] if scope.returns else []),
            ]
        return parts
    if isinstance(scope, ast.ClassDef):
        return [*scope.decorator_list, *scope.bases, *(k.value for k in scope.keywords)]
    return [scope.generators[0].iter]
