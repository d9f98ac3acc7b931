"""How a virtio-mmio device's level-triggered interrupt reaches the guest.

`IrqfdInterrupt` (preferred): KVM_IRQFD with a resamplefd. Writing the trigger eventfd asserts the GSI in the
kernel without a userspace ioctl from the worker; when the guest EOIs the interrupt KVM de-asserts the line and
signals the resamplefd, and the worker re-asserts it if InterruptStatus is still non-zero. This keeps level
semantics (the line stays up while a bit is set) without a KVM_IRQ_LINE call on every InterruptACK, which a vCPU
thread would have to make. On arm64 the irqfd GSI of SPI n is n (KVM's default routing: INTID - 32).

`LineInterrupt` (fallback when KVM lacks KVM_CAP_IRQFD_RESAMPLE): KVM_IRQ_LINE level 1 when a bit is set, level 0
when InterruptACK clears the last one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm


class IrqfdInterrupt:
    def __init__(self, vm: Vm, gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi
        self.trigger_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.resample_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            vm.irqfd(self.trigger_fd, gsi, resample_fd=self.resample_fd)
        except OSError:
            self._close_fds()
            raise

    def trigger(self) -> None:
        os.eventfd_write(self.trigger_fd, 1)

    def lower(self) -> None:
        pass  # KVM lowers the line on EOI; `resample` decides whether it goes up again

    def _close_fds(self) -> None:
        os.close(self.trigger_fd)
        os.close(self.resample_fd)

    def close(self) -> None:
        try:
            self.vm.irqfd(self.trigger_fd, self.gsi, deassign=True)
        except OSError:
            pass  # the VM fd may already be gone
        self._close_fds()


class LineInterrupt:
    def __init__(self, set_level: Callable[[int], None]) -> None:
        self.set_level = set_level
        self.resample_fd: int | None = None  # no resampling: InterruptACK lowers the line

    def trigger(self) -> None:
        self.set_level(1)

    def lower(self) -> None:
        self.set_level(0)

    def close(self) -> None:
        pass
