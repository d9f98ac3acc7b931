"""The in-kernel PC interrupt controllers and timer: PIC + IOAPIC + LAPIC, and the PIT."""

from __future__ import annotations

from pyvmm_bindings import constants as c

from pyvmm.errors import KvmUnavailableError
from pyvmm.kvm.vm import Vm


def create(vm: Vm) -> None:
    """Must run before any vCPU is created (the LAPICs are made with the vCPUs)."""
    for cap, name in ((c.KVM_CAP_IRQCHIP, "an in-kernel interrupt controller"), (c.KVM_CAP_PIT2, "an in-kernel PIT")):
        if not vm.check_extension(cap):
            raise KvmUnavailableError(f"this KVM lacks {name}, which pyvmm's x86_64 machine needs")
    try:
        vm.create_irqchip()
        vm.create_pit2(c.KVM_PIT_SPEAKER_DUMMY)  # the kernel answers port 0x61 too
    except OSError as err:
        raise KvmUnavailableError(f"KVM could not create the in-kernel PIC/IOAPIC/PIT: {err.strerror}") from None
