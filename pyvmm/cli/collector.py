"""The cyclic garbage collector is off while a command starts (the console script's `main` in pyvmm/__main__.py
turns it off before click is imported; `resume` turns it back on).

Start-up creates tens of thousands of objects that live until exit (modules, classes, functions, click's commands)
and hardly any garbage; the collector's passes over them cost some 4% of a `pyvmm run`'s instructions before the
guest's first byte. `resume` freezes what exists by then (moved to the permanent generation, never scanned again)
and turns the collector on. Every command gets it back as soon as its module is imported, except `run`, whose
imports and machine build are most of start-up: it resumes once the vCPUs run (cli/run.py's `CollectorOnceStarted`)
or when the run ends without starting.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyvmm.vmm.vmm import Vmm


def resume() -> None:
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


class CollectorOnceStarted:
    """A run feature (pyvmm.vmm.runner's `extra`): the collector is back on once the vCPUs run."""

    def subscribe(self, vmm: "Vmm") -> None:
        vmm.events.started.subscribe(lambda vmm: resume())

    def close(self) -> None:
        resume()
