"""How a VM ended, decided once by whoever sees the end first (a vCPU, a signal, the control API), and the run's
final exit status decided from it by `final_status`."""

from __future__ import annotations

import threading
from typing import NamedTuple

from pyvmm.errors import ExitStatus


class VmOutcome(NamedTuple):
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


class ConsoleVerdict(NamedTuple):
    """What the console checks and `-- CMD` saw (pyvmm.vmm.checks), for final_status."""

    expect: str | None = None  # the --expect pattern, when one was given
    expect_matched: bool = False
    command: bool = False  # `-- CMD`: the status is the command's
    command_status: int | None = None  # as the guest reported it (test device EXIT, or the console marker line)
    # --fail-on matched (the reason): a line whose end KVM still held queued when the guest powered off is only
    # seen once the VM has stopped, too late to stop it with FAILED
    failed: str | None = None


class FinalStatus(NamedTuple):
    status: int  # the process exit status
    note: str | None = None  # one line for the user when the status is not the outcome's own
    error: bool = False


def final_status(outcome: VmOutcome, verdict: ConsoleVerdict | None = None) -> FinalStatus:
    """The one decision of a run's exit status, from how the VM ended and what the console checks saw."""
    status = outcome.status
    if verdict is None or (status == ExitStatus.TIMEOUT and outcome.error):
        return FinalStatus(status)
    if verdict.failed is not None and status == ExitStatus.OK and not outcome.error:
        return FinalStatus(ExitStatus.FAILED, verdict.failed, error=True)
    if verdict.expect is not None and not verdict.expect_matched and status == ExitStatus.OK:
        return FinalStatus(ExitStatus.FAILED, f"the guest ended before the console matched --expect "
                                              f"{verdict.expect!r} ({outcome.reason})")
    if not verdict.command or verdict.expect_matched or outcome.error or outcome.reboot:
        return FinalStatus(status)
    if verdict.command_status is not None:
        return FinalStatus(verdict.command_status)
    if status != ExitStatus.OK:
        return FinalStatus(status)  # stopped from outside (SIGINT 130, SIGTERM 143): keep what says so
    return FinalStatus(ExitStatus.SOFTWARE, f"the guest ended without reporting the command's exit status "
                                            f"({outcome.reason})", error=True)
