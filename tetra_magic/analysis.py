"""What a cell reads from the notebook, what it binds, and whether it ends in an expression.

The cell runs far from the notebook, so it only sees the globals we ship and only the names we
bring back return. Shipping too little breaks the cell; shipping too much costs bytes and can
fail on an unpicklable value the cell never touches. So "reads" means names loaded before the
cell has certainly bound them: a name bound only inside an `if`, loop, `match` or `try` may
still be read from the notebook afterwards, and names used inside functions, lambdas and
comprehensions count where they resolve to module globals (Python's own `symtable` decides that).

IPython syntax is analysed as what it runs: `%time stmt` as `stmt`, and `!cmd {expr} $name` as
a read of the names it interpolates, since IPython evaluates them in the cell's namespace.
"""

from __future__ import annotations

import ast
import builtins
import re
import symtable
from dataclasses import dataclass

from tetra_magic.cell_runtime import expansion_fields

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
_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Lambda,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)
_OWN_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_COMPREHENSIONS = ("listcomp", "setcomp", "dictcomp", "genexpr")
_TRIES = tuple({ast.Try, getattr(ast, "TryStar", ast.Try)})
# A line IPython's transformer wrote for `%magic args` or `!cmd`, maybe after `x = `.
_MAGIC_LINE = re.compile(
    r"^(?P<head>\s*(?:[\w.\[\], ]+=\s*)?)get_ipython\(\)\."
    r"(?P<call>run_line_magic|system|getoutput)\((?P<args>.*)\)\s*$"
)
_STATEMENT_MAGICS = ("time", "timeit")


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


def analyse(source: str, filename: str = "<tetra-cell>") -> CellAnalysis:
    """Analyse Python `source` (already transformed); raises SyntaxError as Python would."""
    tree = ast.parse(source, filename)
    seen = _as_python(source)
    try:
        seen_tree = ast.parse(seen, filename)
    except SyntaxError:  # a rewrite gone wrong must not stop a valid cell
        seen, seen_tree = source, tree
    table = symtable.symtable(seen, filename, "exec")
    nested = list(_nested_tables(table))
    reads = _Reads(nested).block(seen_tree.body, set())
    body = tree.body
    has_last = bool(body) and isinstance(body[-1], ast.Expr) and not source.rstrip().endswith(";")
    builtin_names = set(dir(builtins))
    return CellAnalysis(
        source=source,
        reads=frozenset(reads - builtin_names),
        binds=frozenset(_module_bindings(table, nested)),
        has_last_expr=has_last,
        deletes=frozenset(_deletions(seen_tree)),
        builtins_read=frozenset(reads & builtin_names),
    )


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
        fields = [f for f in expansion_fields(args[0]) if _is_expression(f)]
        return f"{head}({''.join(f'{field}, ' for field in fields)})"
    return line


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


class _Reads:
    """Walks statements in order, tracking names certainly bound so far. A loop or `with`
    target is bound inside its body; bindings inside branches, loops and `try` are not
    certain after them."""

    def __init__(self, nested: list[symtable.SymbolTable]) -> None:
        self.nested = nested

    def block(self, body: list[ast.stmt], bound: set[str]) -> set[str]:
        reads: set[str] = set()
        for stmt in body:
            reads |= self.statement(stmt, bound)
        return reads

    def statement(self, stmt: ast.stmt, bound: set[str]) -> set[str]:
        if isinstance(stmt, (ast.For, ast.AsyncFor)):
            reads = self.expr(stmt.iter, bound)
            reads |= self.block(stmt.body, bound | _stores(stmt.target))
            return reads | self.block(stmt.orelse, set(bound))
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            reads = set()
            for item in stmt.items:
                reads |= self.expr(item.context_expr, bound)
                if item.optional_vars is not None:
                    bound |= _stores(item.optional_vars)
            return reads | self.block(stmt.body, bound)
        if isinstance(stmt, (ast.If, ast.While)):
            reads = self.expr(stmt.test, bound)
            bound |= _stores(stmt.test)  # a walrus in the test always runs
            return reads | self.block(stmt.body, set(bound)) | self.block(stmt.orelse, set(bound))
        if isinstance(stmt, _TRIES):
            reads = self.block(stmt.body, set(bound))
            for handler in stmt.handlers:
                reads |= self.expr(handler.type, bound) if handler.type else set()
                reads |= self.block(handler.body, bound | {handler.name} - {None})
            return reads | self.block(stmt.orelse + stmt.finalbody, set(bound))
        if isinstance(stmt, ast.Match):
            return self.match(stmt, bound)
        reads = self.expr(stmt, bound)
        if isinstance(stmt, _DEFINITE):
            bound |= _stores(stmt)
        return reads

    def match(self, stmt: ast.Match, bound: set[str]) -> set[str]:
        reads = self.expr(stmt.subject, bound)
        for case in stmt.cases:
            inside = bound | _captures(case.pattern)
            reads |= self.expr(case.pattern, bound)
            reads |= self.expr(case.guard, inside) if case.guard else set()
            reads |= self.block(case.body, set(inside))
        return reads

    def expr(self, node: ast.AST, bound: set[str]) -> set[str]:
        return _loads(node, self.nested) - bound


def _nested_tables(table: symtable.SymbolTable):
    for child in table.get_children():
        yield child
        yield from _nested_tables(child)


def _span(node: ast.AST) -> range:
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return range(start, (node.end_lineno or node.lineno) + 1)


def _loads(node: ast.AST, nested: list[symtable.SymbolTable]) -> set[str]:
    """Module globals `node` may read: its own loads plus those of scopes defined inside it."""
    names = set(_module_loads(node))
    if not hasattr(node, "lineno"):
        return names
    lines = _span(node)
    for table in nested:
        if table.get_lineno() in lines:
            names |= {s.get_name() for s in table.get_symbols() if _reads_global(table, s)}
    return names


def _reads_global(table: symtable.SymbolTable, symbol: symtable.Symbol) -> bool:
    """Whether a nested scope reads a module global; a comprehension's walrus target is a
    global it writes (`[y := f(v) for v in vs]`), not one it reads."""
    if not (symbol.is_global() and symbol.is_referenced()):
        return False
    return not (table.get_name() in _COMPREHENSIONS and symbol.is_assigned())


def _captures(pattern: ast.AST) -> set[str]:
    """Names a `case` pattern binds when it matches."""
    names = set()
    for node in ast.walk(pattern):
        name = getattr(node, "name", None) or getattr(node, "rest", None)
        if isinstance(node, (ast.MatchAs, ast.MatchStar, ast.MatchMapping)) and name:
            names.add(name)
    return names


def _stores(stmt: ast.AST) -> set[str]:
    """Names `stmt` binds at module level."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    names = {
        node.id
        for node in _walk_module_scope(stmt)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
    }
    return names | _comprehension_walrus(stmt)


def _comprehension_walrus(node: ast.AST) -> set[str]:
    """Targets of `:=` inside comprehensions, which bind in the enclosing (module) scope."""
    names = set()
    todo = [node]
    while todo:
        current = todo.pop()
        if isinstance(current, ast.NamedExpr) and isinstance(current.target, ast.Name):
            names.add(current.target.id)
        if not isinstance(current, _OWN_SCOPES):
            todo.extend(ast.iter_child_nodes(current))
    return names


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


def _deletions(tree: ast.Module) -> set[str]:
    """Names the cell may leave unbound: `del` at module level or of a `global` name, and the
    target of `except ... as name`, which Python deletes when the handler ends."""
    declared = {
        name for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names
    }
    module = list(_walk_module_scope(tree))
    names = {h.name for h in module if isinstance(h, ast.ExceptHandler) and h.name}
    return names | _deleted(module) | (_deleted(ast.walk(tree)) & declared)


def _deleted(nodes) -> set[str]:
    return {
        t.id
        for n in nodes
        if isinstance(n, ast.Delete)
        for t in n.targets
        if isinstance(t, ast.Name)
    }


def _walk_module_scope(node: ast.AST):
    """ast.walk that does not enter nested scopes (their names are theirs, or in symtable)."""
    todo = _scope_outer_parts(node) if isinstance(node, _SCOPES) else [node]
    while todo:
        current = todo.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if isinstance(child, _SCOPES):
                todo.extend(_scope_outer_parts(child))
            else:
                todo.append(child)


def _scope_outer_parts(scope: ast.AST) -> list[ast.AST]:
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


def _module_loads(stmt: ast.AST) -> list[str]:
    """Names `stmt` loads at module scope (an augmented assignment loads its target first)."""
    names = []
    for node in _walk_module_scope(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Load, ast.Del)):
            names.append(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names
