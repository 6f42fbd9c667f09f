"""Look at the live cell view as a user sees it: PNGs of a %%tetra cell in JupyterLab.

    .venv/bin/python tools/screenshot_view.py [--theme light|dark|both] [--out DIR]

Starts JupyterLab (headless Chromium, see tests/helpers/lab_page.py) on a notebook with a demo cell
that prints, writes to stderr, installs nothing or a small package, and sleeps; takes one
picture while it runs (logs opened), one after it ends, one of a failing cell and one of a
cancelled cell, per theme. Prints each PNG's path. Needs Debian's chromium, playwright and
jupyterlab, like the browser tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import lab_page

DEMO = """%%tetra --local --name demo
import sys, time
for step in range(40):
    print(f"step {step:02d}  loss={1 / (step + 1):.4f}  " + "#" * step)
    if step == 7:
        print("warning: learning rate is high", file=sys.stderr)
    time.sleep(0.05)
print("a long line " * 30)
time.sleep(8)
print("finished")
"""
FAILING = (
    "%%tetra --local --name failing\nvalues = [1, 2, 3]\nprint('before the error')\n"
    "total = sum(values) / 0\n"
)
CANCELLED = "%%tetra --local --name cancel-me\nimport time\nprint('working…')\ntime.sleep(60)\n"


def shoot(theme: str, out: Path) -> list[Path]:
    """Run the demo cells in a JupyterLab of `theme`; the pictures taken."""
    root = Path(tempfile.mkdtemp(prefix="tetra-shots-"))
    lab_page.write_notebook(
        root / "view.ipynb", ["%load_ext tetra_magic", DEMO, FAILING, CANCELLED]
    )
    shots: list[Path] = []
    with lab_page.jupyterlab(root, theme=theme) as lab, lab_page.browser() as context:
        nb = lab_page.NotebookPage(context.new_page(), lab, "view.ipynb").open()
        try:
            _cells(nb, theme, out, shots)
        except Exception:
            page = out / f"{theme}-failed-page.png"
            nb.page.screenshot(path=str(page), full_page=True)
            print(f"failed; the page as it was: {page}", file=sys.stderr)
            raise
    return shots


def _cells(nb: lab_page.NotebookPage, theme: str, out: Path, shots: list[Path]) -> None:
    """Run each demo cell and take its pictures."""
    if True:
        nb.run(0)
        nb.wait_done(0)
        nb.run(1)
        nb.cell(1).locator(".tetra-output").get_by_text("a long line").first.wait_for(
            timeout=120_000
        )
        nb.cell(1).locator(".jupyter-widget-Collapse-header").click()
        time.sleep(0.5)
        shots.append(_picture(nb, 1, out / f"{theme}-1-running.png"))
        nb.wait_done(1)
        shots.append(_picture(nb, 1, out / f"{theme}-2-done.png"))
        nb.run(2)
        nb.wait_done(2)
        shots.append(_picture(nb, 2, out / f"{theme}-3-failed.png"))
        nb.run(3)
        nb.cell(3).locator(".tetra-output").get_by_text("working").wait_for(timeout=60_000)
        nb.cell(3).locator(".tetra-cancel").click()
        time.sleep(0.3)
        shots.append(_picture(nb, 3, out / f"{theme}-4-cancelling.png"))
        nb.wait_done(3)
        shots.append(_picture(nb, 3, out / f"{theme}-5-cancelled.png"))


def _picture(nb: lab_page.NotebookPage, index: int, path: Path) -> Path:
    nb.cell(index).scroll_into_view_if_needed()
    nb.cell(index).screenshot(path=str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--theme", choices=["light", "dark", "both"], default="both")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: a new temp dir)")
    args = parser.parse_args()
    why = lab_page.missing()
    if why:
        print(f"cannot take screenshots: {why}", file=sys.stderr)
        return 1
    out = args.out or Path(tempfile.mkdtemp(prefix="tetra-view-"))
    out.mkdir(parents=True, exist_ok=True)
    for theme in ["light", "dark"] if args.theme == "both" else [args.theme]:
        for path in shoot(theme, out):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
