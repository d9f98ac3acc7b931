"""Typed lifecycle events of one VM (the contract of a feature that subscribes to them: runner.Feature).

Order for one boot: before_vcpus(vm) -> started(vmm) -> stopping(outcome) -> finished(outcome). With
`--on-reboot restart` the first three repeat for every boot; `finished` comes once, with the final outcome, while the
last machine still exists (its test device can be read); a VM that fails before its vCPUs start gets no event after
before_vcpus. Handlers run on the thread that causes the event: `stopping` runs on whichever thread stopped the VM (a
vCPU thread for the guest's own exit) unless that happened before `started` was emitted, in which case it follows
`started` on the runner's thread; the others run on the runner's thread.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from pyvmm.kvm.vm import Vm
from pyvmm.outcome import VmOutcome

T = TypeVar("T")
Owner = TypeVar("Owner")  # what `started` hands its handlers: the Vmm (generic so this module needs no import of it)


class Event(Generic[T]):
    """Handlers called in subscription order with the event's value; an exception propagates to the emitter."""

    def __init__(self) -> None:
        self._handlers: list[Callable[[T], None]] = []

    def subscribe(self, handler: Callable[[T], None]) -> None:
        self._handlers.append(handler)

    def emit(self, value: T) -> None:
        for handler in list(self._handlers):
            handler(value)


class Lifecycle(Generic[Owner]):
    def __init__(self) -> None:
        self.before_vcpus: Event[Vm] = Event()  # the VM exists, no vCPU yet (some capabilities must come first)
        self.started: Event[Owner] = Event()  # every vCPU thread runs
        self.stopping: Event[VmOutcome] = Event()  # the VM was asked to stop; vCPU threads are still alive
        self.finished: Event[VmOutcome] = Event()  # the VM ended for good; the machine is not torn down yet

