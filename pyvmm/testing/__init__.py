"""Testing kernels and guests with pyvmm from Python: `Machine` (pyvmm.testing.machine) and the pytest plugin
(pyvmm.testing.plugin, registered as the `pytest11` entry point `pyvmm`)."""

from pyvmm.testing.console import Console, ConsoleTimeout
from pyvmm.testing.machine import Machine, MachineError, machine_spec

__all__ = ["Console", "ConsoleTimeout", "Machine", "MachineError", "machine_spec"]
