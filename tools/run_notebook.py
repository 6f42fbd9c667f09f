"""Execute notebooks in a real kernel and print their outputs, as the README's first command does.

    python tools/run_notebook.py notebooks/quickstart.ipynb [more.ipynb ...] [--save]

Every cell runs in order, in a kernel of this Python, and each code cell's source and text
outputs are printed. --save writes the executed notebook back with its outputs: that is how the
saved outputs in notebooks/ are made, and what nbval compares later runs against. A notebook
in which a cell without the `raises-exception` tag failed is not saved, and the exit status is 1.

The kernel gets the environment `kernel_environment()` makes (nbval's kernels get the same one,
from notebooks/conftest.py): the plain-text view, whose output is deterministic, and no RunPod
key, so `%%tetra` cells always run on the embedded local endpoint, never on someone's account.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import nbformat
from ipykernel.kernelspec import RESOURCES, get_kernel_dict
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tetra_magic import state_dir

CELL_TIMEOUT_S = 900  # a first cell on a fresh machine builds the workers' environment
KEY_VARIABLE = "RUNPOD_API_KEY"


def kernel_environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` changed so a notebook kernel shows plain text and finds no RunPod key.

    The key is looked up in RUNPOD_API_KEY, then in ~/.runpod/config.toml. Where that file
    exists, the kernel gets a private empty HOME; the places that depend on HOME and should
    not move (tetra-magic's state and worker environment, uv's cache, the user site-packages,
    IPython's profile) are pinned to where they are now.
    """
    env = dict(base)
    env.pop(KEY_VARIABLE, None)
    env["TETRA_MAGIC_DISPLAY"] = "text"
    home = Path(env.get("HOME") or Path.home())
    if not (home / ".runpod" / "config.toml").exists():
        return env
    cache = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    env.setdefault("TETRA_MAGIC_HOME", str(cache / "tetra-magic"))
    env.setdefault("UV_CACHE_DIR", str(cache / "uv"))
    env.setdefault("PYTHONUSERBASE", str(home / ".local"))
    env.setdefault("IPYTHONDIR", str(home / ".ipython"))
    env["HOME"] = tempfile.mkdtemp(prefix="tetra-kernel-home-")
    return env


class ThisPythonKernels(KernelSpecManager):
    """Kernel specs where "python3" is always this interpreter with its ipykernel, so a
    user-level kernelspec of that name can never run the notebooks on another Python."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == "python3":
            return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())
        return super().get_kernel_spec(kernel_name)


@contextlib.contextmanager
def kernel_manager() -> Iterator[KernelManager]:
    """A manager for a "python3" kernel of this Python that talks to it over Unix sockets.

    Over TCP (jupyter_client's default) ipykernel warns that the channels are not encrypted and
    "susceptible to eavesdropping": true of any loopback port another local user can reach, and
    alarming in a tool that handles API keys. Unix sockets in a private (0700) directory are
    reachable by this user only, and the kernel says nothing. The socket path is absolute: the
    kernel runs in the notebook's folder, the client here. Windows has no ipc transport.
    """
    if sys.platform == "win32":
        yield KernelManager(kernel_name="python3", kernel_spec_manager=ThisPythonKernels())
        return
    with tempfile.TemporaryDirectory(prefix="tetra-kernel-") as folder:
        yield KernelManager(
            kernel_name="python3",
            kernel_spec_manager=ThisPythonKernels(),
            transport="ipc",
            ip=str(Path(folder) / "kernel"),
        )


def execute(path: Path, env: Mapping[str, str]) -> nbformat.NotebookNode:
    """Run every cell of the notebook at `path` (errors do not stop it) in a kernel with the
    environment `env`; the executed notebook."""
    nb = nbformat.read(path, as_version=4)
    with kernel_manager() as manager:
        client = NotebookClient(
            nb, km=manager, timeout=CELL_TIMEOUT_S, allow_errors=True, record_timing=False
        )
        # The client shuts the kernel down (cleanup_kc) rather than leave it to notice that
        # this process has exited, as it would with a kernel manager passed in.
        client.execute(cleanup_kc=True, cwd=str(path.resolve().parent), env=dict(env))
    return nb


def endpoint_note(env: Mapping[str, str]) -> str | None:
    """What the run left behind, if anything: the local endpoint its cells started stays up for
    the next notebook, which a newcomer should hear about, with how to stop it, rather than
    find a server running later. `env` is the kernels' environment (where their state is)."""
    from tetra_magic.local import control

    saved = os.environ.get("TETRA_MAGIC_HOME")
    os.environ["TETRA_MAGIC_HOME"] = env.get("TETRA_MAGIC_HOME") or str(state_dir.home())
    try:
        found = control.status()
    finally:
        if saved is None:
            os.environ.pop("TETRA_MAGIC_HOME")
        else:
            os.environ["TETRA_MAGIC_HOME"] = saved
    if not found.running or found.record is None:
        return None
    command = control.cli_command()
    return (
        f"The local endpoint these cells ran on is still up (pid {found.record.get('pid')}), for"
        " the next notebook;\nit stops by itself after two idle hours."
        f" To see it: {command} status\nTo stop it now: {command} stop"
    )


def settle_streams(nb: nbformat.NotebookNode) -> None:
    """Merge each run of consecutive stream outputs into one stdout and one stderr output, in
    that order, keeping the runs where they are among the cell's other outputs (a plot between
    two prints stays between them).

    The kernel flushes stdout and stderr separately, in pieces whose number and interleaving
    change from run to run; nbval merges them the same way before comparing, so this changes
    nothing it checks, and a re-saved notebook differs from the last one only where its text
    does.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        settled: list[nbformat.NotebookNode] = []
        run: list[nbformat.NotebookNode] = []
        for output in [*cell.outputs, None]:
            if output is not None and output.output_type == "stream":
                run.append(output)
                continue
            for name in ("stdout", "stderr"):
                text = "".join(o.text for o in run if o.name == name)
                if text:
                    settled.append(nbformat.v4.new_output("stream", name=name, text=text))
            run = []
            if output is not None:
                settled.append(output)
        cell.outputs = settled


def text_of(output: nbformat.NotebookNode) -> str:
    """An output as a terminal shows it: streams, tracebacks, and text/plain of results."""
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return "\n".join(output.traceback) + "\n"
    data = output.get("data", {})
    return data.get("text/plain", "") + "\n" if "text/plain" in data else ""


def show(nb: nbformat.NotebookNode) -> None:
    """Print each code cell's source and what it output."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        print(f"In [{cell.execution_count}]:\n{cell.source}\n")
        for output in cell.outputs:
            sys.stdout.write(text_of(output))
        print("-" * 60, flush=True)


def unexpected_errors(nb: nbformat.NotebookNode) -> list[int]:
    """Execution counts of cells that failed without the raises-exception tag saying they may."""
    return [
        cell.execution_count
        for cell in nb.cells
        if cell.cell_type == "code"
        and "raises-exception" not in cell.metadata.get("tags", [])
        and any(o.output_type == "error" for o in cell.outputs)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--save", action="store_true", help="write the outputs into the files")
    args = parser.parse_args(argv)
    env = kernel_environment(os.environ)
    status = 0
    for path in args.notebooks:
        print(f"=== {path}", flush=True)
        nb = execute(path, env)
        show(nb)
        if failed := unexpected_errors(nb):
            print(f"{path}: cells In {failed} raised unexpectedly; not saved", file=sys.stderr)
            status = 1
        elif args.save:
            settle_streams(nb)
            nbformat.write(nb, path)
    if note := endpoint_note(env):
        print(f"\n{note}")
    return status


if __name__ == "__main__":
    sys.exit(main())
