"""A page the guest reads as memory and whose writes still exit as MMIO: a read-only memory slot (KVM_MEM_READONLY).

A device whose register reads have, in some state, neither side effects nor values that queued writes could change
publishes what each register reads as on such a page (pyvmm.devices.serial's register mirror): the guest's reads
then cost no exit at all, and its writes to the same addresses still reach the device's `write` (KVM turns a write
to a read-only slot into an MMIO exit, or queues it in a coalesced zone). `show()` maps the slot, `hide()` deletes
it, after which reads exit as before: KVM zaps the stage-2/EPT mapping before KVM_SET_USER_MEMORY_REGION returns,
so no vCPU reads the page once `hide()` is back.
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING

from pyvmm_bindings.constants import KVM_MEM_READONLY

from pyvmm.kvm.ioctl import ffi

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm


class ReadOnlyPage:
    """One host page (mmap.PAGESIZE) at a page-aligned guest-physical address, in its own memory slot."""

    def __init__(self, vm: Vm, slot: int, guest_phys: int) -> None:
        size = mmap.PAGESIZE
        if guest_phys % size:
            raise ValueError(f"a read-only page must be page-aligned: {guest_phys:#x} is not a multiple of {size:#x}")
        self._vm, self.slot, self.guest_phys, self.size = vm, slot, guest_phys, size
        self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._host = ffi.from_buffer(self.buffer)
        self.shown = False
        self.changes = 0  # how many times the slot was mapped or deleted (each a memslot update in KVM)

    def show(self) -> None:
        """Map the page: from now on the guest's reads there return the buffer's bytes without exiting."""
        if not self.shown:
            self._vm.set_memory_region(self.slot, self.guest_phys, self.size, int(ffi.cast("uintptr_t", self._host)),
                                       flags=KVM_MEM_READONLY)
            self.shown = True
            self.changes += 1

    def hide(self) -> None:
        """Delete the slot: once this returns, the guest's reads there exit to userspace again."""
        if self.shown:
            self._vm.set_memory_region(self.slot, self.guest_phys, 0, 0, flags=KVM_MEM_READONLY)
            self.shown = False
            self.changes += 1

    def close(self) -> None:
        """Delete the slot (if the VM is still open) and free the page."""
        if self._vm.fd >= 0:
            try:
                self.hide()
            except OSError:
                pass  # the VM is going away: its slots go with it
        ffi.release(self._host)
        self.buffer.close()

