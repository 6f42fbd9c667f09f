"""tetra_magic: `%load_ext tetra_magic`, then `%%tetra --gpu A100` runs a cell on RunPod.

Loading stays cheap: the magic module imports IPython pieces only; the REST client, widgets and
the local endpoint are imported when a cell first runs (our worker's protocol too, unless a
notebook's own `worker` module makes it come now: our_worker.py).
"""

from __future__ import annotations

from typing import Any

from tetra_magic import our_worker

__version__ = "0.1.0"

our_worker.claim()  # before any module of ours imports `worker`: see our_worker.py


def load_ipython_extension(ipython: Any) -> None:
    from tetra_magic.magic import TetraMagic

    ipython.register_magics(TetraMagic)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove %%tetra and %tetra, and the TetraMagic instance %config knew."""
    magics = ipython.magics_manager.magics
    magics["cell"].pop("tetra", None)
    magics["line"].pop("tetra", None)
    instance = ipython.magics_manager.registry.pop("TetraMagic", None)
    if instance in ipython.configurables:
        ipython.configurables.remove(instance)
