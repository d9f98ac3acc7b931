"""Test doubles for the KVM side that the device manager and the vCPU loop talk to (no /dev/kvm needed)."""

from __future__ import annotations

import mmap

from pyvmm.kvm.memory import GuestMemory, MemoryRegion


class RecordingVm:
    """Records every Vm method the device manager calls; KVM_CAP_IRQFD and KVM_CAP_IRQFD_RESAMPLE as asked."""

    def __init__(self, irqfd: bool = False) -> None:
        self.calls: list[tuple] = []
        self.irqfd_caps = irqfd
        self.memory = GuestMemory()
        self.memory.add(MemoryRegion(0, 0x4000_0000, 0x10000, mmap.mmap(-1, 0x10000)))

    def check_extension(self, cap: int) -> int:
        return int(self.irqfd_caps)

    def irq_line(self, irq: int, level: int) -> None:
        self.calls.append(("irq_line", irq, level))

    def irqfd(self, eventfd: int, gsi: int, deassign: bool = False, resample_fd: int | None = None) -> None:
        self.calls.append(("irqfd", gsi, deassign, resample_fd is not None))

    def ioeventfd(self, eventfd: int, addr: int, length: int, pio: bool = False, deassign: bool = False,
                  datamatch: int | None = None) -> None:
        self.calls.append(("ioeventfd", addr, length, datamatch))

    def close(self) -> None:
        self.memory.close()
