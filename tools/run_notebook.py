"""Execute a notebook in a real kernel and print its outputs, as the README's first command does.

`python tools/run_notebook.py notebooks/quickstart.ipynb [--save]` runs every cell in order
(cells run remotely go to the local endpoint when there is no RunPod key) and prints each cell's
source and text outputs; --save writes the executed notebook back with its outputs.
"""

from __future__ import annotations

import argparse
import os
import sys

import nbformat
from nbclient import NotebookClient


def text_of(output: nbformat.NotebookNode) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return "\n".join(output.traceback) + "\n"
    data = output.get("data", {})
    return data.get("text/plain", "") + "\n" if "text/plain" in data else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook")
    parser.add_argument("--save", action="store_true", help="write the outputs into the file")
    args = parser.parse_args()
    os.environ.setdefault("TETRA_MAGIC_DISPLAY", "text")
    nb = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True)
    client.execute(cwd=os.path.dirname(os.path.abspath(args.notebook)))
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        print(f"In [{cell.execution_count}]:\n{cell.source}\n")
        for output in cell.outputs:
            sys.stdout.write(text_of(output))
        print("-" * 60)
    if args.save:
        nbformat.write(nb, args.notebook)
    return 0


if __name__ == "__main__":
    sys.exit(main())
