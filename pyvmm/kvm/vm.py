"""A KVM virtual machine: its fd, guest memory, interrupt lines, eventfds, devices and capabilities."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from pyvmm.errors import HostResourceError
from pyvmm.kvm.ioctl import bindings, check_extension, ffi, ioctl, new
from pyvmm.kvm.memory import GuestMemory, MemoryRegion, allocate
from pyvmm.kvm.system import Kvm

if TYPE_CHECKING:
    from pyvmm.kvm.readonly import ReadOnlyPage


class Vm:
    """One VM. Create vCPUs with `pyvmm.kvm.vcpu.Vcpu.create(vm, index)`."""

    def __init__(self, kvm: Kvm, vm_type: int = 0) -> None:
        self.kvm = kvm
        self.fd = kvm.create_vm(vm_type)
        self.memory = GuestMemory()
        self._next_slot = 0
        # cffi buffers handed to KVM must stay alive as long as KVM uses their addresses.
        self._pinned: list[Any] = []
        # In-kernel device fds (vGIC, ...): each keeps the whole VM alive in the kernel until it is closed.
        self._device_fds: list[int] = []

    def close(self) -> None:
        for device_fd in self._device_fds:
            os.close(device_fd)
        self._device_fds.clear()
        if self.fd >= 0:
            os.close(self.fd)  # KVM drops its references to guest RAM with the VM
            self.fd = -1
        for buffer in self._pinned:
            ffi.release(buffer)  # cffi's export of the mmap must end before the mapping can close
        self._pinned.clear()
        self.memory.close()

    # -- capabilities -------------------------------------------------------------------------------------------
    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (the VM-specific answer); 0 when absent."""
        return check_extension(self.fd, cap)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM fd; raises OSError (EINVAL when the kernel does not know `cap`)."""
        request = new("struct kvm_enable_cap *")
        request.cap = cap
        request.flags = flags
        for i, value in enumerate(args):
            request.args[i] = value
        ioctl(self.fd, bindings.KVM_ENABLE_CAP, request)

    # -- memory -------------------------------------------------------------------------------------------------
    def add_ram(self, guest_phys: int, size: int) -> MemoryRegion:
        mapping = allocate(size)
        host_buffer = ffi.from_buffer(mapping)
        try:
            self.set_memory_region(self._next_slot, guest_phys, size, int(ffi.cast("uintptr_t", host_buffer)))
        except OSError as err:
            ffi.release(host_buffer)
            mapping.close()
            raise HostResourceError(
                f"KVM refused {size >> 20} MiB of guest RAM at {guest_phys:#x}: {err.strerror}"
            ) from None
        self._pinned.append(host_buffer)
        memory_region = MemoryRegion(self._next_slot, guest_phys, size, mapping)
        self.memory.add(memory_region)
        self._next_slot += 1
        return memory_region

    def readonly_page(self, guest_phys: int) -> ReadOnlyPage:
        """A page of host memory for the guest to read at `guest_phys` once shown (pyvmm.kvm.readonly); it takes a
        memory slot of its own and is not guest RAM (devices cannot DMA to it). Raises OSError where KVM lacks
        KVM_CAP_READONLY_MEM."""
        from pyvmm_bindings import constants as c

        from pyvmm.kvm.readonly import ReadOnlyPage

        if not self.check_extension(c.KVM_CAP_READONLY_MEM):
            raise OSError(errno.EOPNOTSUPP, "KVM has no read-only memory slots (KVM_CAP_READONLY_MEM)")
        page = ReadOnlyPage(self, self._next_slot, guest_phys)
        self._next_slot += 1
        return page

    def set_memory_region(self, slot: int, guest_phys: int, size: int, host_address: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION: map [host_address, + size) at `guest_phys` as memory slot `slot`; size 0
        deletes the slot. Raises OSError."""
        region = new("struct kvm_userspace_memory_region *")
        region.slot = slot
        region.flags = flags
        region.guest_phys_addr = guest_phys
        region.memory_size = size
        region.userspace_addr = host_address
        ioctl(self.fd, bindings.KVM_SET_USER_MEMORY_REGION, region)

    # -- interrupts and eventfds --------------------------------------------------------------------------------
    def irq_line(self, irq: int, level: int) -> None:
        request = new("struct kvm_irq_level *")
        request.irq = irq
        request.level = level
        ioctl(self.fd, bindings.KVM_IRQ_LINE, request)

    def irqfd(self, eventfd: int, gsi: int, deassign: bool = False, resample_fd: int | None = None) -> None:
        """KVM_IRQFD: writing `eventfd` asserts `gsi`. With resample_fd the line is level-triggered: KVM lowers it
        when the guest EOIs and then signals resample_fd. Deassign with the same eventfd and gsi."""
        from pyvmm_bindings import constants as c

        request = new("struct kvm_irqfd *")
        request.fd = eventfd
        request.gsi = gsi
        if deassign:
            request.flags = c.KVM_IRQFD_FLAG_DEASSIGN
        elif resample_fd is not None:
            request.flags = c.KVM_IRQFD_FLAG_RESAMPLE
            request.resamplefd = resample_fd
        ioctl(self.fd, bindings.KVM_IRQFD, request)

    def ioeventfd(self, eventfd: int, addr: int, length: int, pio: bool = False, deassign: bool = False,
                  datamatch: int | None = None) -> None:
        from pyvmm_bindings import constants as c

        request = new("struct kvm_ioeventfd *")
        request.fd = eventfd
        request.addr = addr
        request.len = length
        flags = 0
        if pio:
            flags |= c.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= c.KVM_IOEVENTFD_FLAG_DEASSIGN
        if datamatch is not None:
            flags |= c.KVM_IOEVENTFD_FLAG_DATAMATCH
            request.datamatch = datamatch
        request.flags = flags
        ioctl(self.fd, bindings.KVM_IOEVENTFD, request)

    def coalesce_writes(self, addr: int, size: int, pio: bool = False, unregister: bool = False) -> None:
        """KVM_(UN)REGISTER_COALESCED_MMIO: the guest's writes inside [addr, addr + size) of guest-physical space
        (of port space with `pio`, KVM_CAP_COALESCED_PIO) go to the coalesced ring (pyvmm.kvm.coalesced) instead of
        exiting, while the ring has room. Raises OSError."""
        zone = new("struct kvm_coalesced_mmio_zone *")
        zone.addr = addr
        zone.size = size
        zone.pio = int(pio)
        ioctl(self.fd, bindings.KVM_UNREGISTER_COALESCED_MMIO if unregister else bindings.KVM_REGISTER_COALESCED_MMIO,
              zone)

    # -- in-kernel devices --------------------------------------------------------------------------------------
    def create_device(self, device_type: int, test_only: bool = False) -> int:
        """KVM_CREATE_DEVICE; returns the device fd (or 0 when test_only and supported). Raises OSError."""
        from pyvmm_bindings import constants as c

        request = new("struct kvm_create_device *")
        request.type = device_type
        request.flags = c.KVM_CREATE_DEVICE_TEST if test_only else 0
        ioctl(self.fd, bindings.KVM_CREATE_DEVICE, request)
        if not test_only:
            self._device_fds.append(request.fd)  # the VM owns it and closes it
        return request.fd

    def stats_fd(self) -> int:
        """KVM_GET_STATS_FD on the VM; the caller owns the returned fd."""
        return ioctl(self.fd, bindings.KVM_GET_STATS_FD)

    # -- x86_64 -------------------------------------------------------------------------------------------------
    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: the in-kernel PIC and IOAPIC (and a LAPIC per vCPU created after it)."""
        ioctl(self.fd, bindings.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2 with kvm_pit_config.flags (e.g. KVM_PIT_SPEAKER_DUMMY)."""
        config = new("struct kvm_pit_config *")
        config.flags = flags
        ioctl(self.fd, bindings.KVM_CREATE_PIT2, config)

    def set_tss_addr(self, address: int) -> None:
        """KVM_SET_TSS_ADDR: three pages of guest-physical space KVM needs on Intel (passed by value)."""
        ioctl(self.fd, bindings.KVM_SET_TSS_ADDR, address)

    def set_identity_map_addr(self, address: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for the real-mode identity map on Intel (passed by address)."""
        ioctl(self.fd, bindings.KVM_SET_IDENTITY_MAP_ADDR, new("uint64_t *", address))

    # -- arm64 --------------------------------------------------------------------------------------------------
    def arm_preferred_target(self) -> Any:
        """KVM_ARM_PREFERRED_TARGET: a filled `struct kvm_vcpu_init *` (target and default features)."""
        init = new("struct kvm_vcpu_init *")
        ioctl(self.fd, bindings.KVM_ARM_PREFERRED_TARGET, init)
        return init


def set_device_attr(device_fd: int, group: int, attr: int, value: int | None = None, *, check: bool = False) -> None:
    """KVM_SET_DEVICE_ATTR (or KVM_HAS_DEVICE_ATTR when check) with a u64 value passed by address."""
    holder = new("uint64_t *", value or 0)
    request = new("struct kvm_device_attr *")
    request.group = group
    request.attr = attr
    request.addr = int(ffi.cast("uintptr_t", holder)) if value is not None else 0
    ioctl(device_fd, bindings.KVM_HAS_DEVICE_ATTR if check else bindings.KVM_SET_DEVICE_ATTR, request)
