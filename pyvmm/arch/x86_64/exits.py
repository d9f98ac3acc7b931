"""The exits only x86_64 has: SHUTDOWN (a triple fault, which a PC answers with a reset) goes to this hook; port I/O
is dispatched by the common vCPU loop on the port bus named here (see ArchExits)."""

from __future__ import annotations

from pyvmm_bindings import constants as c

from pyvmm.arch.machine import ArchExits
from pyvmm.devices.bus import Bus
from pyvmm.errors import ExitStatus
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.outcome import VmOutcome


def exits(vcpu: Vcpu, pio_bus: Bus) -> ArchExits:
    def handle(reason: int) -> VmOutcome:
        return VmOutcome(ExitStatus.REBOOT, f"vCPU {vcpu.index} shut down (triple fault): treated as a reboot",
                         reboot=True)

    return ArchExits(frozenset({c.KVM_EXIT_SHUTDOWN}), handle, port_bus=pio_bus)
