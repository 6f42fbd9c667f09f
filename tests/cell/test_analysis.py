"""Cell analysis: which notebook names a cell reads and which it binds decide what is shipped
and what comes back, so each case here is a cell a user could write."""

from __future__ import annotations

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from tetra_magic.cell.analysis import analyse


def transform(cell: str) -> str:
    """IPython syntax turned into Python as the shell does it by default."""
    return TransformerManager().transform_cell(cell)


def facts(cell: str):
    return analyse("\n" + transform(cell))


@pytest.mark.parametrize(
    ("cell", "reads", "binds"),
    [
        ("y = x + 1", {"x"}, {"y"}),
        ("x = 1\ny = x", set(), {"x", "y"}),
        ("x = x + 1", {"x"}, {"x"}),
        ("total += 1", {"total"}, {"total"}),
        ("import numpy as np\nfrom os import path", set(), {"np", "path"}),
        ("import os.path", set(), {"os"}),
        ("def f(a=d):\n    return a * w\n", {"d", "w"}, {"f"}),
        (
            "class C(Base):\n    k = v\n    def m(self):\n        return g(self)\n",
            {"Base", "v", "g"},
            {"C"},
        ),
        ("sq = [i * s for i in range(n)]", {"s", "n"}, {"sq"}),
        ("lam = lambda t: t + off", {"off"}, {"lam"}),
        ("for i in items:\n    acc = i", {"items"}, {"i", "acc"}),
        ("with ctx() as fh:\n    data = fh", {"ctx"}, {"fh", "data"}),
        ("(w := 5)\nprint(w)", set(), {"w"}),
        ("del old", {"old"}, {"old"}),
        ("def f():\n    global g\n    g = 1\nf()", set(), {"f", "g"}),
        (
            "def outer():\n    k = 1\n    def inner():\n        return k + q\n    return inner",
            {"q"},
            {"outer"},
        ),
        ("if c:\n    q = 1\nprint(q)", {"c", "q"}, {"q"}),
        ("out = [y := f(v) for v in vs]\nprint(y)", {"f", "vs"}, {"out", "y"}),
        ("if (n := len(a)) > 1:\n    pass\nprint(n)", {"a"}, {"n"}),
        # a walrus in a for's iterable, a with's or a match's subject always runs
        ("for x in (lk := [1, 2]):\n    pass\nprint(lk)", set(), {"lk", "x"}),
        ("with open(p := 'f') as fh:\n    pass\nprint(p)", set(), {"p", "fh"}),
        ("match (v := get()):\n    case _:\n        pass\nprint(v)", {"get"}, {"v"}),
        ("grid = [[i * j for j in cols] for i in rows]", {"cols", "rows"}, {"grid"}),
        ("class K:\n    vals = [scale * v for v in base]", {"scale", "base"}, {"K"}),
        ("@deco(arg)\ndef f(x: T = d) -> R:\n    return x", {"deco", "arg", "T", "d", "R"}, {"f"}),
        ("f = lambda a, b=dflt: (lambda: a + g)()", {"dflt", "g"}, {"f"}),
        # A function body may run now or later: its globals count where it is defined.
        ("def f():\n    return later\nlater = 1", {"later"}, {"f", "later"}),
        ("x: Alias", {"Alias"}, {"x"}),
        ("try:\n    r = risky()\nexcept Err as e:\n    r = e", {"risky", "Err"}, {"r", "e"}),
        (
            "match cmd:\n    case Point(x=px) if px > lim:\n        hit = px\n"
            "    case [a, *rest]:\n        hit = a\nprint(hit)",
            {"cmd", "Point", "lim", "hit"},
            {"px", "hit", "a", "rest"},
        ),
        ("async def main():\n    await job()", {"job"}, {"main"}),
    ],
)
def test_reads_and_binds(cell: str, reads: set[str], binds: set[str]) -> None:
    result = facts(cell)
    assert result.reads == reads
    assert result.binds == binds


@pytest.mark.parametrize(
    ("cell", "deletes"),
    [
        ("del a, b[0], c.d", {"a"}),
        ("if flag:\n    del a", {"a"}),
        ("try:\n    pass\nexcept E as err:\n    pass", {"err"}),
        ("def f():\n    global g\n    del g", {"g"}),
        ("def f():\n    loc = 1\n    del loc", set()),
        ("if flag:\n    y = 1", set()),
    ],
)
def test_deletions_are_only_what_the_cell_can_unbind(cell: str, deletes: set[str]) -> None:
    """A name bound on a branch not taken is absent afterwards but not deleted: the notebook
    keeps its value, as it would running the cell locally."""
    assert facts(cell).deletes == deletes


def test_ipython_syntax_is_analysed_as_what_it_runs() -> None:
    result = facts(
        "!echo {name.upper()} $other '$quoted' $$literal\nfiles = !ls {folder}\n"
        "%time y = slow(x)\nz = %time fast(w)\n%timeit -n 3 quick(q)"
    )
    assert "get_ipython().system" in result.source
    assert result.reads == {"name", "other", "folder", "slow", "x", "fast", "w", "quick", "q"}
    assert result.binds == {"files", "y", "z"}


def test_magic_lines_keep_the_cells_line_numbers() -> None:
    result = facts("%time a = 1\nb = a + c")
    assert result.reads == {"c"}


@pytest.mark.parametrize(
    ("cell", "has_last"),
    [
        ("x = 1\nx * 2", True),
        ("x = 1\nx * 2;", False),
        ("x = 1", False),
        ("", False),
        ("print(1)", True),
        ("for i in r:\n    i", False),
    ],
)
def test_last_expression(cell: str, has_last: bool) -> None:
    assert facts(cell).has_last_expr is has_last


def test_line_numbers_match_the_cell() -> None:
    """Line 1 is the %%tetra line, so the cell's first line of code is line 2."""
    with pytest.raises(SyntaxError) as info:
        analyse("\n" + transform("x = 1\ny = (\n"), "<tetra-cell-3>")
    assert info.value.filename == "<tetra-cell-3>"
    assert info.value.lineno in (3, 4)


def test_what_the_worker_needs_of_the_statements_is_found_here() -> None:
    """The cell's top-level definitions (decorators included, with their first line), the
    names `with` binds, imports and the submodules `import a.b` loads: at the cell's level, not
    inside its functions."""
    result = facts(
        "import os.path, xml.dom.minidom as md\nfrom json import *\n"
        "if go:\n    import email.utils\n"
        "@deco\ndef f():\n    import re.sub_module\n    with g() as inner:\n        pass\n"
        "with open(p) as (a, b), lock:\n    class C:\n        pass\n"
    )
    f = "@deco\ndef f():\n    import re.sub_module\n    with g() as inner:\n        pass\n"
    assert result.defines == {"f": (f, 6)}
    assert result.with_targets == {"a", "b"}
    assert result.imported == ("email", "md", "os")
    assert result.submodules == {"email": ("email.utils",), "os": ("os.path",)}
