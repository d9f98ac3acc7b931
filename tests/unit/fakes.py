"""Test doubles for the KVM side that the device manager and the vCPU loop talk to (no /dev/kvm needed)."""

from __future__ import annotations

import errno
import mmap

from pyvmm.kvm.memory import GuestMemory, MemoryRegion
from pyvmm.kvm.readonly import ReadOnlyPage


class RecordingVm:
    """Records every Vm method the device manager calls; KVM_CAP_IRQFD and KVM_CAP_IRQFD_RESAMPLE as asked, and
    read-only pages (real pages of host memory whose slot updates are recorded) if asked."""

    fd = 1_000_000  # open, as far as a ReadOnlyPage can tell

    def __init__(self, irqfd: bool = False, readonly: bool = False) -> None:
        self.calls: list[tuple] = []
        self.irqfd_caps = irqfd
        self.readonly = readonly
        self._next_slot = 1
        self.memory = GuestMemory()
        self.memory.add(MemoryRegion(0, 0x4000_0000, 0x10000, mmap.mmap(-1, 0x10000)))

    def check_extension(self, cap: int) -> int:
        return int(self.irqfd_caps)

    def readonly_page(self, guest_phys: int) -> ReadOnlyPage:
        if not self.readonly:
            raise OSError(errno.EOPNOTSUPP, "KVM has no read-only memory slots (KVM_CAP_READONLY_MEM)")
        self._next_slot += 1
        return ReadOnlyPage(self, self._next_slot - 1, guest_phys)

    def set_memory_region(self, slot: int, guest_phys: int, size: int, host_address: int, flags: int = 0) -> None:
        self.calls.append(("set_memory_region", slot, guest_phys, size, flags))

    def irq_line(self, irq: int, level: int) -> None:
        self.calls.append(("irq_line", irq, level))

    def irqfd(self, eventfd: int, gsi: int, deassign: bool = False, resample_fd: int | None = None) -> None:
        self.calls.append(("irqfd", gsi, deassign, resample_fd is not None))

    def ioeventfd(self, eventfd: int, addr: int, length: int, pio: bool = False, deassign: bool = False,
                  datamatch: int | None = None) -> None:
        self.calls.append(("ioeventfd", addr, length, datamatch))

    def close(self) -> None:
        self.memory.close()
