"""What a cell reads from the notebook, what it binds, and whether it ends in an expression.

The cell runs far from the notebook, so it only sees the globals we ship and only the names we
bring back return. Shipping too little breaks the cell; shipping too much costs bytes and can
fail on an unpicklable value the cell never touches. So "reads" means names loaded before the
cell has certainly bound them: a name bound only inside an `if`, loop or `try` may still be read
from the notebook afterwards, and names used inside functions, lambdas and comprehensions count
where they resolve to module globals (Python's own `symtable` decides that).
"""

from __future__ import annotations

import ast
import builtins
import symtable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class CellAnalysis:
    """The facts about one cell that decide what is shipped and what comes back."""

    source: str
    reads: frozenset[str]
    binds: frozenset[str]
    has_last_expr: bool


def transform(cell: str) -> str:
    """IPython syntax (`!cmd`, `%magic`, `x = !cmd`) turned into Python, as IPython does it."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell)


def analyse(source: str, filename: str = "<tetra-cell>") -> CellAnalysis:
    """Analyse Python `source` (already transformed); raises SyntaxError as Python would."""
    tree = ast.parse(source, filename)
    table = symtable.symtable(source, filename, "exec")
    nested = list(_nested_tables(table))
    reads = _Reads(nested).block(tree.body, set())
    body = tree.body
    has_last = bool(body) and isinstance(body[-1], ast.Expr) and not source.rstrip().endswith(";")
    return CellAnalysis(
        source=source,
        reads=frozenset(reads - set(dir(builtins))),
        binds=frozenset(_module_bindings(table, nested)),
        has_last_expr=has_last,
    )


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
            return reads | self.block(stmt.body, set(bound)) | self.block(stmt.orelse, set(bound))
        if isinstance(stmt, ast.Try):
            reads = self.block(stmt.body, set(bound))
            for handler in stmt.handlers:
                reads |= self.block(handler.body, set(bound))
            return reads | self.block(stmt.orelse + stmt.finalbody, set(bound))
        reads = self.expr(stmt, bound)
        if isinstance(stmt, _DEFINITE):
            bound |= _stores(stmt)
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
    lines = _span(node)
    for table in nested:
        if table.get_lineno() in lines:
            names |= {
                s.get_name() for s in table.get_symbols() if s.is_global() and s.is_referenced()
            }
    return names


def _stores(stmt: ast.AST) -> set[str]:
    """Names `stmt` binds at module level."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    return {
        node.id
        for node in _walk_module_scope(stmt)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
    }


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
            parts += [*scope.decorator_list]
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
