"""Plots, tables and display() from remote cells, in real kernels against a local endpoint.

Where the kernel can run the same cell itself (IPython.display), the remote outputs are compared
with the local ones: same output types, same mime types and data, in the same order among the
prints. matplotlib lives on the worker only (--deps matplotlib); the kernel has none, so figures
are checked for what the inline backend shows: PNG images, where and how often they appear.
Workers without IPython use the stand-in; a worker with IPython (--deps ipython) uses its own.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.kernels import (
    CellRun,
    LiveKernel,
    environ,
    private_local_endpoint,
    run_cells,
    shared_worker_env,
)

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

LOAD = "%load_ext tetra_magic"
TEXT_MIMES = ("text/html", "text/markdown", "text/latex", "image/svg+xml", "application/json")

DISPLAY_KINDS = """\
import base64, os, pathlib, tempfile
from IPython.display import (HTML, JSON, SVG, Image, Latex, Markdown, Pretty, clear_output,
                             display, update_display)
PNG = base64.b64decode(
    'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')
print('start')
display(HTML('<b>bold</b>'), Markdown('*md*'))
display(Latex(r'$\\alpha$'), JSON({'a': [1, 2]}, expanded=True))
display(Image(PNG), Image(data=PNG, width=10))
path = os.path.join(tempfile.mkdtemp(), 'dot.png')
pathlib.Path(path).write_bytes(PNG)
display(Image(filename=path), Image(path))
display(SVG('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="4"/>'))
display(Pretty('pretty text'))
print('middle')
class Rich:
    def _repr_html_(self):
        return '<i>rich</i>'
    def _repr_markdown_(self):
        return '*rich*'
class Bundle:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {'text/html': '<u>bundle</u>', 'text/plain': 'a bundle'}
display(Rich(), Bundle())
display(HTML('<p>raw</p>'), raw=False)
display({'text/html': '<p>raw bundle</p>', 'text/plain': 'raw'}, raw=True)
handle = display(HTML('<p>old</p>'), display_id=True)
handle.update(HTML('<p>new</p>'))
clear_output(wait=True)
print('after the clear')
display(Markdown('*kept*'))
print('end')
"""


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private endpoint; the worker environment has no IPython before and after (the test
    with IPython installs it)."""
    _uninstall("ipython")
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home")):
        yield
    _uninstall("ipython")


def _uninstall(package: str) -> None:
    python = Path(shared_worker_env()) / "bin" / "python"
    if python.exists():
        from uv import find_uv_bin

        command = [find_uv_bin(), "pip", "uninstall", "--python", str(python), package]
        subprocess.run(command, capture_output=True, check=False)


def _shape(run: CellRun) -> list[Any]:
    """The outputs as a user sees them: streams and displays in order, each display with its
    mime types, its text data and its images (object addresses masked)."""
    shape = []
    for output in run.outputs:
        if output.output_type == "stream":
            shape.append((output.name, output.text))
            continue
        data = output.get("data", {})
        texts = {m: data[m] for m in TEXT_MIMES if m in data}
        images = {m: v for m, v in data.items() if m.startswith("image/") and m not in texts}
        plain = re.sub(r" at 0x[0-9a-f]+", " at 0x…", data.get("text/plain", ""))
        shape.append((output.output_type, sorted(data), texts, images, plain, output.metadata))
    return shape


def _remote(cell: str, options: str = "") -> str:
    return f"%%tetra --local {options}\n{cell}"


NO_IPYTHON = "from importlib.machinery import PathFinder\nprint(PathFinder.find_spec('IPython'))"


def test_each_display_kind_arrives_as_a_local_cell_shows_it() -> None:
    _, local, remote, probe = run_cells(
        LOAD, DISPLAY_KINDS, _remote(DISPLAY_KINDS), _remote(NO_IPYTHON), timeout=600
    )
    assert probe.stdout == "None\n"  # the worker has no IPython: the stand-in served
    assert local.error is None and remote.error is None, remote.error
    assert _shape(local)[0] == ("stdout", "after the clear\n")  # the clear did clear
    assert _shape(remote) == _shape(local)
    before_the_clear = _remote(DISPLAY_KINDS.replace("clear_output(wait=True)", "pass"))
    local_all, remote_all = run_cells(
        LOAD, DISPLAY_KINDS.replace("clear_output(wait=True)", "pass"), before_the_clear
    )[1:]
    kinds = {tuple(s[1]) for s in _shape(remote_all) if s[0] == "display_data"}
    assert {("image/png", "text/plain"), ("application/json", "text/plain")} <= kinds
    assert _shape(remote_all) == _shape(local_all)


def test_display_names_imported_in_the_notebook_work_in_a_remote_cell() -> None:
    cells = run_cells(
        LOAD,
        "from IPython.display import HTML, Markdown, clear_output, display",
        _remote(
            "print('gone')\nclear_output()\ndisplay(HTML('<b>h</b>'), Markdown('*m*'))\n"
            "HTML('<i>last</i>')"
        ),
        timeout=600,
    )
    remote = cells[2]
    assert remote.error is None, remote.error
    assert [(o.output_type, o.data.get("text/html") or o.data.get("text/markdown")) for o in
            remote.outputs] == [("display_data", "<b>h</b>"), ("display_data", "*m*"),
                                ("execute_result", "<i>last</i>")]  # fmt: skip


def test_a_worker_with_ipython_uses_its_own_display_machinery() -> None:
    probe = (
        "import importlib.machinery, IPython\n"
        "print(importlib.machinery.PathFinder.find_spec('IPython') is not None,"
        " IPython.__version__[0].isdigit() and IPython.__version__ != '0+tetra.stand.in')\n"
    )
    _, local, remote, found = run_cells(
        LOAD,
        DISPLAY_KINDS,
        _remote(DISPLAY_KINDS, "--deps ipython"),
        _remote(probe),
        timeout=900,
    )
    assert found.stdout == "True True\n", found
    assert _shape(remote) == _shape(local)


def _png_of(output: Any) -> bytes:
    return base64.b64decode(output.data["image/png"])


def test_matplotlib_figures_show_as_under_the_inline_backend() -> None:
    cells = run_cells(
        LOAD,
        "import importlib.util\nprint(importlib.util.find_spec('matplotlib'))",
        _remote(
            "%matplotlib inline\nimport matplotlib.pyplot as plt\nprint('before')\n"
            "plt.plot([1, 2, 3])\nplt.show()\nprint('between')\nplt.plot([3, 1])\nplt.show()\n"
            "print('after')\n",
            "--deps matplotlib",
        ),
        _remote(
            "import matplotlib.pyplot as plt\nplt.figure()\nplt.plot([1, 2])\nprint('drawn')\n"
        ),
        _remote(
            "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.bar([1, 2], [3, 4])\n"
            "plt.close(fig)\ndisplay(fig)\nprint('shown')\nfig"
        ),
        _remote(
            "import matplotlib.pyplot as plt\nfrom IPython.display import clear_output\n"
            "for epoch in range(4):\n    clear_output(wait=True)\n"
            "    plt.plot(range(epoch + 2))\n    plt.show()\n    print('epoch', epoch)\n"
        ),
        _remote(
            "import matplotlib as mpl\nmpl.rcParams['figure.dpi'] = 50\n"
            "print(mpl.rcParams['figure.dpi'])"
        ),
        *[_remote("import matplotlib as mpl\nprint(mpl.rcParams['figure.dpi'])")] * 2,
        timeout=900,
    )
    kernel, two, open_at_end, last, loop, *styled = cells[1:]
    assert kernel.stdout == "None\n"  # the kernel has no matplotlib
    assert importlib.util.find_spec("matplotlib") is None
    # no notes: plt stays on the worker, fig and ax came home as images
    assert [c.stderr for c in (two, open_at_end, last, loop)] == [""] * 4
    # a setting lasts for its cell, whichever of the two workers runs the next one
    assert [c.stdout for c in styled] == ["50.0\n", "100.0\n", "100.0\n"]
    assert [s[:2] for s in _shape(two) if s[0] != "stderr"] == [
        ("stdout", "before\n"),
        ("display_data", ["image/png", "text/plain"]),
        ("stdout", "between\n"),
        ("display_data", ["image/png", "text/plain"]),
        ("stdout", "after\n"),
    ]
    first, second = (o for o in two.outputs if o.output_type == "display_data")
    assert _png_of(first).startswith(b"\x89PNG") and _png_of(first) != _png_of(second)
    assert first.data["text/plain"] == "<Figure size 640x480 with 1 Axes>"
    assert "non-interactive" not in two.stderr and "Warning" not in two.stderr, two.stderr
    images = [o for o in open_at_end.outputs if o.output_type == "display_data"]
    assert open_at_end.stdout == "drawn\n" and len(images) == 1
    kinds = [(o.output_type, sorted(o.data)) for o in last.outputs if "data" in o]
    assert kinds == [  # closed before the end, so not shown again then
        ("display_data", ["image/png", "text/plain"]),
        ("execute_result", ["image/png", "text/plain"]),
    ]
    assert last.stdout == "shown\n"
    assert [s[:2] for s in _shape(loop) if s[0] != "stderr"] == [
        ("display_data", ["image/png", "text/plain"]),
        ("stdout", "epoch 3\n"),
    ]


def test_an_image_over_the_stream_chunk_limit_arrives_whole() -> None:
    make = (
        "import hashlib, os, struct, zlib\nfrom IPython.display import Image, display\n"
        "def chunk(kind, data):\n"
        "    body = kind + data\n"
        "    return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))\n"
        "side = 1200\nrows = b''.join(b'\\0' + os.urandom(side * 3) for _ in range(side))\n"
        "png = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side,"
        " 8, 2, 0, 0, 0))\n       + chunk(b'IDAT', zlib.compress(rows, 0)) + chunk(b'IEND', b''))\n"
        "print(len(png) > 3_000_000, hashlib.sha256(png).hexdigest())\ndisplay(Image(png))\n"
        "print('done')\n"
    )
    run = run_cells(LOAD, _remote(make), timeout=600)[1]
    large, digest = run.stdout.splitlines()[0].split()
    image = next(o for o in run.outputs if o.output_type == "display_data")
    assert large == "True" and hashlib.sha256(_png_of(image)).hexdigest() == digest
    assert run.stdout.endswith("done\n")


def test_hundreds_of_outputs_are_capped_with_a_note() -> None:
    cell = (
        "from IPython.display import HTML, display\n"
        "for i in range(300):\n    display(HTML(f'<p>{i}</p>'))\n"
    )
    capped, small = run_cells(
        LOAD, _remote(cell), _remote(cell, "--env TETRA_MAX_DISPLAYS=5"), timeout=600
    )[1:]
    shown = [o.data["text/html"] for o in capped.outputs if o.output_type == "display_data"]
    assert shown == [f"<p>{i}</p>" for i in range(100)]
    assert "tetra: 200 display outputs were dropped" in capped.stderr
    assert "at most 100 at a time" in capped.stderr
    assert len([o for o in small.outputs if o.output_type == "display_data"]) == 5
    assert "tetra: 295 display outputs were dropped" in small.stderr


def test_the_widget_view_leaves_ordinary_display_outputs_in_order() -> None:
    cell = (
        "from IPython.display import HTML, display, clear_output\nprint('gone')\n"
        "clear_output(wait=True)\nprint('one')\ndisplay(HTML('<b>plot</b>'))\nprint('two')\n"
    )
    with environ({"TETRA_MAGIC_DISPLAY": "widget"}):
        run = run_cells(LOAD, _remote(cell), timeout=600)[1]
    shape = _shape(run)
    assert "tetra-summary" in shape[0][2]["text/html"]  # the panel, become its summary
    assert [s[:3] for s in shape[1:]] == [
        ("stdout", "one\n"),
        ("display_data", ["text/html", "text/plain"], {"text/html": "<b>plot</b>"}),
        ("stdout", "two\n"),
    ]


def test_a_worker_that_does_not_stream_still_shows_displays_in_order(
    tmp_path: Path,
) -> None:
    """The published worker's shape: everything in the response's stdout, at the end."""
    cell = (
        "from IPython.display import HTML, display\n"
        "print('a')\ndisplay(HTML('<b>b</b>'))\nprint('c')\n"
    )
    with environ({"TETRA_WORKER_STREAM": "0"}), private_local_endpoint(tmp_path):
        run = run_cells(LOAD, _remote(cell), _remote(cell, "--out rec"), "print(repr(rec.stdout))")
    for remote in run[1:3]:
        assert [s[:3] for s in _shape(remote)] == [
            ("stdout", "a\n"),
            ("display_data", ["text/html", "text/plain"], {"text/html": "<b>b</b>"}),
            ("stdout", "c\n"),
        ]
    assert run[3].stdout == "'a\\nc\\n'\n"


def test_a_display_shows_while_the_cell_still_runs(tmp_path: Path) -> None:
    """The cell waits (on this machine's local endpoint) until the test has seen its display
    arrive: a display held back until the cell ends would make it give up waiting."""
    seen = tmp_path / "seen"
    kernel = LiveKernel()
    try:
        assert kernel.run(LOAD).error is None
        cell = kernel.execute(
            _remote(
                "import os, time\nfrom IPython.display import HTML, display\nprint('first')\n"
                "display(HTML('<b>early</b>'))\nwaited = 0\n"
                f"while not os.path.exists({str(seen)!r}) and waited < 600:\n"
                "    time.sleep(0.1)\n    waited += 1\n"
                "print('seen in time' if waited < 600 else 'not seen')\n"
            )
        )

        def shown(run: CellRun) -> bool:
            return any(o.output_type == "display_data" for o in run.outputs)

        early = kernel.outputs(cell, until=shown, timeout=120)
        seen.touch()
        assert [s[:2] for s in _shape(early)] == [
            ("stdout", "first\n"),
            ("display_data", ["text/html", "text/plain"]),
        ]
        assert kernel.outputs(cell, timeout=120).stdout == "first\nseen in time\n"
    finally:
        kernel.close()
