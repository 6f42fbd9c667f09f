"""Cell analysis: which notebook names a cell reads and which it binds decide what is shipped
and what comes back, so each case here is a cell a user could write."""

from __future__ import annotations

import pytest

from tetra_magic.analysis import analyse, transform


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
    ],
)
def test_reads_and_binds(cell: str, reads: set[str], binds: set[str]) -> None:
    result = facts(cell)
    assert result.reads == reads
    assert result.binds == binds


def test_ipython_syntax_is_transformed_before_analysis() -> None:
    result = facts("!echo {name}\nfiles = !ls\n%time y = slow(x)")
    assert "get_ipython().system" in result.source
    assert "files" in result.binds
    assert result.reads >= {"get_ipython"}


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
