"""Testing kernels and guests with pyvmm from Python: `Machine` (pyvmm.testing.machine) and the pytest plugin
(pyvmm.testing.plugin, registered as the `pytest11` entry point `pyvmm`)."""

from pyvmm.testing.console import Console, ConsoleTimeout
from pyvmm.testing.machine import Machine, MachineConfig, MachineError

__all__ = ["Console", "ConsoleTimeout", "Machine", "MachineConfig", "MachineError"]
