"""How a virtio-mmio device's interrupt reaches the guest: edge-triggered (arm64) or level-triggered (x86_64).

The arch layout says which (`SlotWindow.edge`); either way InterruptStatus lives in the transport and InterruptACK
clears it there: the line only tells the guest to look.

Edge (arm64, kvmtool's model): the device-tree node says IRQ_TYPE_EDGE_RISING, so the guest configures the SPI as
edge in the GIC, which latches a pulse as pending even while the interrupt is active (a pulse on a level-configured
SPI could be lost). `IrqfdInterrupt(level=False)`: KVM_IRQFD without resample, each eventfd write pulses the SPI in
the kernel (Documentation/virt/kvm/api.rst, KVM_IRQFD); nothing comes back to userspace on EOI. Every signal pulses,
even with a status bit already set: the guest may have read InterruptStatus already and would ACK the new bit with
the old one. On arm64 the irqfd GSI of SPI n is n (KVM's default routing: INTID - 32).

Level (x86_64: Linux configures IOAPIC pins 16-23 level-triggered): `IrqfdInterrupt(level=True)`, KVM_IRQFD with a
resamplefd. Writing the trigger asserts the GSI; when the guest EOIs it KVM de-asserts the line and signals the
resamplefd, and the worker re-asserts it if InterruptStatus is still non-zero (`MmioTransport.resample`).

`LineInterrupt` (fallback without the irqfd capability the mode needs): KVM_IRQ_LINE from the thread that signals:
a 1-0 pulse per signal for edge; for level 1 with the first bit, 0 when InterruptACK clears the last.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm


class IrqfdInterrupt:
    def __init__(self, vm: Vm, gsi: int, level: bool) -> None:
        self.vm = vm
        self.gsi = gsi
        self.trigger_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.resample_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if level else None
        self.kind = "KVM_IRQFD+resamplefd" if level else "KVM_IRQFD (edge)"
        try:
            vm.irqfd(self.trigger_fd, gsi, resample_fd=self.resample_fd)
        except OSError:
            self._close_fds()
            raise

    def trigger(self) -> None:
        os.eventfd_write(self.trigger_fd, 1)

    def lower(self) -> None:
        pass  # edge: nothing to lower; level: KVM lowers the line on EOI and `resample` decides whether it goes up

    def _close_fds(self) -> None:
        os.close(self.trigger_fd)
        if self.resample_fd is not None:
            os.close(self.resample_fd)

    def close(self) -> None:
        try:
            self.vm.irqfd(self.trigger_fd, self.gsi, deassign=True)
        except OSError:
            pass  # the VM fd may already be gone
        self._close_fds()


class LineInterrupt:
    resample_fd: int | None = None  # no resampling: InterruptACK lowers a level line, an edge line is only pulsed

    def __init__(self, set_level: Callable[[int], None], level: bool) -> None:
        self.set_level = set_level
        self.level = level
        self.kind = "KVM_IRQ_LINE" if level else "KVM_IRQ_LINE (edge)"

    def trigger(self) -> None:
        self.set_level(1)
        if not self.level:
            self.set_level(0)  # a pulse, as an irqfd without resample does it

    def lower(self) -> None:
        if self.level:
            self.set_level(0)

    def close(self) -> None:
        pass
