"""Feature areas of `pyvmm run`: each contributes options, configures the VM, hooks into its life, may set the status.

An area module defines `OPTIONS` (click option decorators, applied in order) and `setup(config, values) -> Area`.
`values` holds every area's option values by parameter name; an area reads only its own. Keep module-level imports
light: `pyvmm run` imports every area before the guest prints anything.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol

from pyvmm.config import VmConfig

AREA_MODULES = ("pyvmm.cli.run_idle", "pyvmm.cli.run_devices", "pyvmm.cli.run_testing")


class Area(Protocol):
    def attach(self, vmm: Any) -> None:
        """Register hooks on the Vmm (before_vcpus, on_started, on_finished) before it runs."""

    def finish(self, vmm: Any, outcome: Any, status: int) -> int:
        """After the VM ended: write reports, and return the exit status (usually `status` unchanged)."""


class AreaModule:
    def __init__(self, name: str) -> None:
        self.module = importlib.import_module(name)

    @property
    def options(self) -> list[Callable]:
        return list(self.module.OPTIONS)

    def from_options(self, config: VmConfig, values: dict[str, Any]) -> Area:
        return self.module.setup(config, values)


class NoHooks:
    """For an area whose options asked for nothing this run."""

    def attach(self, vmm: Any) -> None:
        pass

    def finish(self, vmm: Any, outcome: Any, status: int) -> int:
        return status


AREAS = [AreaModule(name) for name in AREA_MODULES]


def area_options(function: Callable) -> Callable:
    for area in reversed(AREAS):
        for option in reversed(area.options):
            function = option(function)
    return function
