"""The exits only x86_64 has: port I/O (dispatched on the port bus) and SHUTDOWN (a triple fault, which a PC answers
with a reset). The common vCPU loop hands them here (Firecracker's `run_arch_emulation`)."""

from __future__ import annotations

from pyvmm_bindings import constants as c

from pyvmm.arch.machine import ArchExits
from pyvmm.devices.bus import Bus
from pyvmm.errors import ExitStatus
from pyvmm.kvm.vcpu import UNPACK_VALUE, Vcpu
from pyvmm.outcome import VmOutcome


def exits(vcpu: Vcpu, pio_bus: Bus) -> ArchExits:
    """The handler for one vCPU; names are bound once because port OUTs are the x86 guests' hot path."""
    page = vcpu.page
    io_exit = page.io_exit
    out_cache = pio_bus.write_cache  # owned (and cleared on every register) by the bus
    write = pio_bus.write
    read = pio_bus.read
    buffer = page.buffer
    unpack_value = UNPACK_VALUE
    EXIT_IO = c.KVM_EXIT_IO
    IO_OUT = c.KVM_EXIT_IO_OUT

    def handle(reason: int) -> VmOutcome | None:
        if reason == EXIT_IO:
            direction, size, port, count, data = io_exit()
            if direction == IO_OUT:
                if count == 1:
                    target = out_cache.get(port << 4 | size)
                    if target is not None:
                        target[0](target[1], size, unpack_value[size](buffer, data)[0])
                    else:
                        write(port, size, unpack_value[size](buffer, data)[0])
                else:  # rep outs
                    for value in page.io_out_values(size, count, data):
                        write(port, size, value)
            else:
                page.complete_io_in(size, data, [read(port, size) for _ in range(count)])
            return None
        return VmOutcome(ExitStatus.REBOOT, f"vCPU {vcpu.index} shut down (triple fault): treated as a reboot",
                         reboot=True)

    return ArchExits(frozenset({c.KVM_EXIT_IO, c.KVM_EXIT_SHUTDOWN}), handle)
