"""The %%tetra cell magic and the %tetra line magic.

A cell flows one way: parse options -> analyse the cell -> pack the request -> send it ->
follow the job (showing it live) -> write the results back. Each step lives in its own module;
this one only wires them together and holds the configurable defaults.
"""

from __future__ import annotations

import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode

from tetra_magic import options as cell_options
from tetra_magic.analysis import analyse, transform


@magics_class
class TetraMagic(Magics):
    """Run notebook cells on RunPod Serverless GPU workers (or the embedded local endpoint)."""

    default_gpu = Unicode(
        "any", help="GPU(s) for cells without --gpu: a name like A100, or a comma list."
    ).tag(config=True)
    default_deps = List(Unicode(), help="Packages every cell installs.").tag(config=True)
    endpoint = Unicode("", help="Endpoint id or URL for cells without --endpoint.").tag(config=True)
    local = Bool(False, help="Run every cell on the embedded local endpoint.").tag(config=True)
    timeout = Float(600.0, help="Seconds a cell may run before it is cancelled.").tag(config=True)
    display = Enum(
        ["auto", "widget", "text"], "auto", help="Live view: widgets, plain text, or auto."
    ).tag(config=True)
    verbose = Bool(False, help="Show worker logs (installs, phases) in the text view.").tag(
        config=True
    )
    # RunPod endpoints the magic provisions (tetra_magic/provision.py); each distinct setting
    # is its own endpoint, found again by the hash in its name.
    worker_image = Unicode(
        "",
        help="GPU worker image ({python} and {version} are filled in); default"
        " $TETRA_MAGIC_WORKER_IMAGE, else runpod/tetra-rp:magic-{version}-py{python}.",
    ).tag(config=True)
    cpu_worker_image = Unicode(
        "",
        help="CPU worker image for --cpu; default $TETRA_MAGIC_CPU_WORKER_IMAGE, else"
        " runpod/tetra-rp-cpu:magic-{version}-py{python}.",
    ).tag(config=True)
    worker_env = Dict(help="Environment variables of the workers (not secrets).").tag(config=True)
    gpu_count = Int(1, help="GPUs per worker.").tag(config=True)
    workers_min = Int(0, help="Workers kept running (billed while idle).").tag(config=True)
    workers_max = Int(3, help="Most workers an endpoint scales to.").tag(config=True)
    idle_timeout = Int(5, help="Seconds an idle worker stays up for the next job.").tag(config=True)
    endpoint_timeout = Int(600, help="Endpoint-wide execution timeout, seconds.").tag(config=True)

    @magic_arguments()
    @argument("--gpu", nargs="+", action="append", metavar="NAME", help="GPU type(s), e.g. A100")
    @argument("--cpu", action="store_true", help="run on a CPU worker")
    @argument("--deps", nargs="+", action="append", metavar="PKG", help="pip packages")
    @argument("--system-deps", nargs="+", action="append", metavar="PKG", help="apt packages")
    @argument("--endpoint", metavar="ID_OR_URL", help="use this endpoint, skip provisioning")
    @argument("--local", action="store_true", help="run on the embedded local endpoint")
    @argument("--timeout", type=float, metavar="SECONDS", help="cancel the cell after this long")
    @argument("--name", help="a name for the job, shown in the view and the --out record")
    @argument("--out", metavar="VAR", help="store the job's record (id, status, timings) in VAR")
    @argument("--no-stream", action="store_true", help="show output only when the cell ends")
    @argument("--quiet", action="store_true", help="show no live view, only the cell's output")
    @argument("--verbose", action="store_true", help="show worker logs in the text view")
    @cell_magic
    def tetra(self, line: str, cell: str) -> Any:
        """Run this cell remotely; its variables come back, its last value is displayed."""
        from tetra_magic.run import run_cell

        args = parse_argstring(self.tetra, line)
        opts = cell_options.build(args, self)
        # IPython counts a stored cell before running it, so this cell is In[count - 1].
        number = max(self.shell.execution_count - 1, 1)
        filename = f"<tetra-cell-{number}>"
        # A leading newline keeps line numbers equal to the cell's: line 1 is the %%tetra line.
        analysis = analyse("\n" + transform(cell), filename)
        return run_cell(
            self.shell, opts, analysis, filename, display=self.display, started=time.time()
        )

    @line_magic("tetra")
    def tetra_line(self, line: str) -> Any:
        """`%tetra endpoints`, `%tetra delete NAME`, `%tetra local`: manage where cells run."""
        command, _, rest = line.strip().partition(" ")
        if command == "local":
            from tetra_magic.local.launcher import ensure_running

            print(f"local endpoint: {ensure_running().base_url}")
            return None
        if command == "endpoints":
            from tetra_magic.provision import show_endpoints

            return show_endpoints()
        if command == "delete":
            from tetra_magic.provision import delete_named

            return delete_named(rest.strip())
        raise UsageError(
            f"%tetra: unknown command {command!r}; use %%tetra for cells, or: local, endpoints,"
            " delete NAME"
        )
