"""The README keeps up with the code: its two commands, every %%tetra option, every setting,
every folder and module."""

from __future__ import annotations

import re
from pathlib import Path

from tetra_magic.magic import TetraMagic

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _first_code_block() -> list[str]:
    block = re.search(r"^```[a-z]*\n(.*?)^```", README, flags=re.S | re.M)
    assert block, "README.md has no code block"
    return block.group(1).splitlines()


def test_the_first_code_block_is_the_two_commands() -> None:
    """.ci/run runs the second line; the first runs the quickstart."""
    setup, test = _first_code_block()
    assert setup.endswith("tools/run_notebook.py notebooks/quickstart.ipynb")
    assert test.endswith("-m pytest")


def test_every_option_is_documented() -> None:
    options = {o for a in TetraMagic.tetra.parser._actions for o in a.option_strings}
    missing = {o for o in options - {"-h", "--help"} if f"`{o}" not in README}
    assert not missing, f"README.md does not document {sorted(missing)}"


def test_every_setting_is_documented() -> None:
    settings = TetraMagic.class_trait_names(config=True)
    missing = {name for name in settings if f"| `{name}` |" not in README}
    assert not missing, f"README.md's settings table lacks {sorted(missing)}"


def test_the_layout_section_names_every_folder_and_module() -> None:
    """ "How the code is laid out" stays true as modules come and go: every folder and module
    of tetra_magic is named there."""
    section = README[README.index("## How the code is laid out") : README.index("## Development")]
    package = ROOT / "tetra_magic"
    folders = {p for p in package.iterdir() if p.is_dir() and not p.name.startswith("__")}
    unnamed = [
        f"tetra_magic/{p.name}/" for p in folders if f"`tetra_magic/{p.name}/`" not in section
    ]
    unnamed += [
        str(p.relative_to(ROOT))
        for p in package.rglob("*.py")
        if not p.name.startswith("__") and f"`{p.name}`" not in section
    ]
    assert sorted(unnamed) == []
