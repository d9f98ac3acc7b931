"""How a VM ended, decided once by whoever sees the end first (a vCPU, a signal, the control API)."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class VmOutcome:
    status: int  # the process exit status `pyvmm run` ends with
    reason: str  # one line for the user
    error: bool = False  # print the reason as an error (stderr) rather than a notice
    reboot: bool = False  # the guest asked for a reset


class StopLatch:
    """The first outcome wins; later ones (vCPUs noticing the stop) are ignored."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._outcome: VmOutcome | None = None

    def set(self, outcome: VmOutcome) -> bool:
        with self._lock:
            if self._outcome is not None:
                return False
            self._outcome = outcome
        self._event.set()
        return True

    @property
    def outcome(self) -> VmOutcome | None:
        return self._outcome

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)
