"""Data files travel on request (issue 21): `--files` sends files of the notebook's working
directory to the cell's working directory on the worker, `--get` brings files the cell wrote
back home, and a remote cell that misses a file the notebook has says how to send it.

What the cells give is compared with the same cells in a plain kernel working in a folder with
the same files, never with values written down. The two kernels work in two folders, so a file
the plain kernel's cell writes cannot stand in for one `--get` should have brought back. The
in-process tests check the options (UsageErrors before anything is sent) and the worker's half
(tetra_magic/runtime/files.py) on their own."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import published as harness
from helpers.kernels import private_local_endpoint, run_cells
from helpers.published import LoopbackEndpoint, kernel_env
from helpers.twins import LOAD, Remote, Twins, assert_same, run_twins
from IPython.core.error import UsageError
from IPython.testing import globalipapp

from tetra_magic.cell.analysis import analyse
from tetra_magic.cell.files import size_text
from tetra_magic.cell.packing import pack
from tetra_magic.magic import TetraMagic, parse_options
from tetra_magic.options import build
from tetra_magic.runtime import files as on_worker

# The published worker behind a loopback endpoint, for the test that runs cells on it.
worker = harness.worker
published = harness.published

FILES = {
    "data.csv": "name,count\napple,3\nbread,5\ncheese,7\n",
    "data/a.txt": "alpha\n",
    "data/deeper/b.txt": "beta\n",
    "notes.txt": "never sent\n",
}
READ_CSV = (
    "import csv\nwith open('data.csv', newline='') as f:\n    rows = list(csv.reader(f))\n"
    "print(len(rows), rows[0])\nrows[-1]"
)
READ_FOLDER = (
    "import os\nfound = sorted(os.path.join(d, n) for d, _, ns in os.walk('data') for n in ns)\n"
    "{p: open(p).read() for p in found}"
)
WRITE = (
    "os.makedirs('results', exist_ok=True)\n"
    "with open('out.txt', 'w') as f:\n    f.write(str(sum(int(r[1]) for r in rows[1:])))\n"
    "with open('results/part.txt', 'w') as f:\n    f.write('part')"
)
READ_BACK = "open('out.txt').read(), open('results/part.txt').read()"
GET = "--get out.txt,results/ --get missing*.bin"


def _cells(remote: Callable[[str, str], str]) -> list[str]:
    """The cells, with the ones that run remotely given their options by `remote`."""
    return [
        remote(READ_CSV, "--files data.csv"),
        remote(READ_FOLDER, "--files data/"),
        remote(WRITE, GET),
        READ_BACK,
    ]


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    for name, text in FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def _assert_as_at_home(twins: Twins, there: Path) -> None:
    assert_same(twins)
    assert twins.local[0].results[-1] == "['cheese', '7']"  # the cells did read the files
    got = twins.remote[2].stderr
    out, part = (there / "out.txt").stat().st_size, (there / "results/part.txt").stat().st_size
    assert f"tetra: got out.txt ({size_text(out)}), results/part.txt ({size_text(part)})" in got
    assert "tetra: --get missing*.bin: matched no file on the worker" in got


@pytest.mark.slow
def test_files_travel_both_ways_on_our_worker(tmp_path: Path) -> None:
    home, there = _folder(tmp_path / "home"), _folder(tmp_path / "there")
    local = run_cells(LOAD, *_cells(lambda source, _: source), cwd=home)[1:]
    hint = "%%tetra --local\nopen('notes.txt').read()"
    with private_local_endpoint(tmp_path / "state", workers=1):
        cells = _cells(lambda source, options: f"%%tetra --local {options}\n{source}")
        remote = run_cells(LOAD, *cells, hint, cwd=there)[1:]
    _assert_as_at_home(Twins(local, remote[:-1]), there)
    missed = remote[-1].error
    assert missed is not None and missed["ename"] == "FileNotFoundError"
    text = "\n".join(missed["traceback"])
    assert "tetra: notes.txt exists here but not on the worker; send it with --files notes.txt" in (
        text
    )


@pytest.mark.slow
def test_files_travel_both_ways_on_the_published_worker(
    published: LoopbackEndpoint, tmp_path: Path
) -> None:
    home, there = _folder(tmp_path / "home"), _folder(tmp_path / "there")
    local = run_cells(LOAD, *_cells(lambda source, _: source), cwd=home)[1:]
    target = f"--endpoint {published.url}"
    cells = _cells(lambda source, options: f"%%tetra {target} {options}\n{source}")
    remote = run_cells(LOAD, *cells, env=kernel_env(published), cwd=there)[1:]
    _assert_as_at_home(Twins(local, remote), there)


# --- in process: the options, and the worker's half ---


@pytest.fixture(scope="module")
def magic() -> TetraMagic:
    return TetraMagic(globalipapp.get_ipython())  # the module's: see tests/magic/test_bad_input.py


@pytest.fixture
def notebook(tmp_path: Path) -> Iterator[Path]:
    folder = _folder(tmp_path / "notebook")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--files /etc/passwd", "--files: '/etc/passwd' is an absolute path"),
        ("--files ../data.csv", "--files: '../data.csv' is a path with `..`"),
        ("--files data/../../x", "--files: 'data/../../x' is a path with `..`"),
        ("--files ~/data.csv", "--files: '~/data.csv' is a path in a home folder"),
        ("--files nothing.csv", "--files: 'nothing.csv' matches no file"),
        ("--files data.csv,*.parquet", "--files: '*.parquet' matches no file"),
        ("--get /tmp/out.txt", "--get: '/tmp/out.txt' is an absolute path"),
        ("--get ../out.txt", "--get: '../out.txt' is a path with `..`"),
    ],
)
def test_bad_patterns_are_usage_errors(
    magic: TetraMagic, notebook: Path, line: str, message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        build(parse_options(line), magic)


def test_patterns_repeat_split_on_commas_and_folders_send_their_files(
    magic: TetraMagic, notebook: Path
) -> None:
    opts = build(parse_options("--files data.csv,data/ --files *.txt --get a.txt,b/ c"), magic)
    assert opts.files == ("data.csv", "data/a.txt", "data/deeper/b.txt", "notes.txt")
    assert opts.get == ("a.txt", "b/", "c")


def test_the_setting_sends_files_for_every_cell(magic: TetraMagic, notebook: Path) -> None:
    magic.files = ["notes.txt"]
    try:
        assert build(parse_options("--files data.csv"), magic).files == ("notes.txt", "data.csv")
        magic.files = ["gone.txt"]
        with pytest.raises(UsageError, match=r"TetraMagic\.files: 'gone\.txt' matches no file"):
            build(parse_options(""), magic)
    finally:
        magic.files = []


def test_an_oversized_request_names_the_files_size(magic: TetraMagic, notebook: Path) -> None:
    (notebook / "big.bin").write_bytes(os.urandom(300_000))
    opts = build(parse_options("--local --files big.bin"), magic)
    analysis = analyse("\nx = 1", "<tetra-cell-1>")
    with pytest.raises(UsageError, match=r"files sent with --files: 0\.3 MB") as refused:
        pack(analysis, {}, opts, filename="<tetra-cell-1>", limit=200_000)
    # No variables went, so neither they nor --session (which keeps variables) are mentioned.
    assert "variables" not in str(refused.value) and "--session" not in str(refused.value)
    spec = pack(analysis, {}, opts, filename="<tetra-cell-1>", limit=10_000_000).spec
    assert list(spec["files"]) == ["big.bin"]
    assert spec["file_contents"][spec["files"]["big.bin"]] == (notebook / "big.bin").read_bytes()


def test_the_worker_writes_a_file_only_when_its_content_differs(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    data = {"d/x.txt": b"one"}
    files = {path: hashlib.sha256(content).hexdigest() for path, content in data.items()}
    contents = {files[path]: content for path, content in data.items()}
    on_worker.write_sent(files, contents)
    target = tmp_path / "d/x.txt"
    assert target.read_bytes() == b"one"
    os.utime(target, ns=(1, 1))
    on_worker.write_sent(files, contents)
    assert target.stat().st_mtime_ns == 1  # the same content: left as it was
    target.write_bytes(b"changed")
    on_worker.write_sent(files, contents)
    assert target.read_bytes() == b"one"
    with pytest.raises(ValueError):
        on_worker.write_sent({"../escape.txt": files["d/x.txt"]}, contents)
    assert on_worker.collect(["d/", "none*"]) == ({"d/x.txt": b"one"}, ["none*"])


@pytest.mark.slow
def test_a_file_edited_at_home_is_sent_again_to_later_cells(tmp_path: Path) -> None:
    """Sent once with --files, then edited here: the next remote cell reads it as it is now,
    with --files or without, never the copy an earlier cell left on the worker; deleted here,
    it is gone there too."""
    folder = tmp_path / "notebook"
    folder.mkdir()
    write = "with open('data.csv', 'w') as f:\n    f.write({!r})"
    read = "open('data.csv').read()"
    with private_local_endpoint(tmp_path / "state", workers=1):
        twins = run_twins(
            write.format("one\n"),
            Remote(read, "--files data.csv"),
            write.format("two, a longer line\n"),
            Remote(read),
            write.format("six\n"),
            Remote(read, "--files data.csv"),
            "import os\nos.remove('data.csv')",
            Remote("import os\nos.path.exists('data.csv')"),
            cwd=folder,
        )
    assert_same(twins)
    assert [twins.local[i].results[-1] for i in (1, 3, 5, 7)] == [
        repr("one\n"),
        repr("two, a longer line\n"),
        repr("six\n"),
        "False",  # deleted here: gone on the worker too
    ]
