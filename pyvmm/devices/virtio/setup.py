"""The machine step: build the configured virtio devices, put each in a virtio-mmio slot on the MMIO bus, wire its
queue notifications (KVM_IOEVENTFD on QueueNotify, datamatch = queue index) and its interrupt (KVM_IRQFD with a
resamplefd, or KVM_IRQ_LINE), and start one worker thread per device.

The devices of a VM are stopped by `Machine.close()` (VirtioDevices.close) before the VM's memory goes away (
registers it as a Vmm.on_finished hook; machine builders call it when a build fails).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from pyvmm.devices.bus import Bus
from pyvmm.devices.virtio import config as vc
from pyvmm.devices.virtio.constants import MMIO_QUEUE_NOTIFY, MMIO_SIZE
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.interrupt import IrqfdInterrupt, LineInterrupt
from pyvmm.devices.virtio.transport import MmioTransport
from pyvmm.devices.virtio.worker import DeviceWorker
from pyvmm.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class Slot:
    index: int
    base: int
    irq: int  # arm64: SPI number; x86_64: IOAPIC GSI
    device: VirtioDevice
    transport: MmioTransport
    worker: DeviceWorker
    interrupt: IrqfdInterrupt | LineInterrupt


class VirtioDevices:
    def __init__(self) -> None:
        self.slots: list[Slot] = []

    def device_nodes(self) -> list:
        """arm64 device-tree nodes, one per slot (devicetree.MmioDeviceNode)."""
        from pyvmm.arch.arm64.devicetree import MmioDeviceNode

        return [MmioDeviceNode("virtio_mmio", s.base, MMIO_SIZE, ["virtio,mmio"], spi=s.irq,
                               extra={"dma-coherent": True}) for s in self.slots]

    def kernel_params(self) -> list[str]:
        """x86_64: the `virtio_mmio.device=<size>@<base>:<irq>` parameters Linux needs to find the slots."""
        return [f"virtio_mmio.device={MMIO_SIZE:#x}@{s.base:#x}:{s.irq}" for s in self.slots]

    def find(self, kind: type) -> list[VirtioDevice]:
        return [s.device for s in self.slots if isinstance(s.device, kind)]

    def console_input(self) -> Callable[[bytes], None] | None:
        """Where typed input goes when the guest's console is a virtio console (hvc0), else None."""
        from pyvmm.devices.virtio.console import Console

        consoles = self.find(Console)
        return consoles[0].feed if consoles else None

    def close(self) -> None:
        for slot in self.slots:
            slot.worker.close()
        for slot in self.slots:
            slot.device.close()
            slot.interrupt.close()
            slot.transport.close()
        self.slots.clear()


def make_device(spec: vc.DeviceConfig, index: int, console_output: Callable[[bytes], None]) -> VirtioDevice:
    if isinstance(spec, vc.DiskConfig):
        from pyvmm.devices.virtio.blk import Block

        return Block(spec, index)
    if isinstance(spec, vc.RngConfig):
        from pyvmm.devices.virtio.rng import Rng

        return Rng()
    if isinstance(spec, vc.ConsoleDeviceConfig):
        from pyvmm.devices.virtio.console import Console

        return Console(console_output)
    if isinstance(spec, vc.NetConfig):
        from pyvmm.devices.virtio.net import Net

        return Net(spec, index)
    if isinstance(spec, vc.VsockConfig):
        from pyvmm.devices.virtio.vsock import Vsock

        return Vsock(spec)
    raise UsageError(f"unknown virtio device configuration {spec!r}")


def _interrupt(vm, gsi: int, line: Callable[[int], None]) -> IrqfdInterrupt | LineInterrupt:
    from pyvmm_bindings import constants as c

    if vm.check_extension(c.KVM_CAP_IRQFD_RESAMPLE):
        try:
            return IrqfdInterrupt(vm, gsi)
        except OSError as err:
            log.info("KVM_IRQFD with resample refused (%s): using KVM_IRQ_LINE", err.strerror)
    return LineInterrupt(line)


def attach(vm, mmio_bus: Bus, specs: list, console_output: Callable[[bytes], None], *, base: int, stride: int,
           slots: int, irq_of: Callable[[int], int], gsi_of: Callable[[int], int], line_of: Callable[[int], int]
           ) -> VirtioDevices:
    """Build and wire every configured device. Order: disks first (vda, vdb, ...), then net, rng, console."""
    if len(specs) > slots:
        raise UsageError(f"{len(specs)} virtio devices asked for: this machine has {slots} virtio-mmio slots")
    order = (vc.DiskConfig, vc.NetConfig, vc.RngConfig, vc.ConsoleDeviceConfig, vc.VsockConfig)
    ordered = sorted(specs, key=lambda s: order.index(type(s)))
    devices = VirtioDevices()
    try:
        _attach_all(vm, mmio_bus, ordered, console_output, devices, base, stride, irq_of, gsi_of, line_of)
    except BaseException:
        devices.close()  # the ones already running use guest RAM: stop them before the caller unmaps it
        raise
    return devices


def _attach_all(vm, mmio_bus: Bus, ordered: list, console_output: Callable[[bytes], None], devices: VirtioDevices,
                base: int, stride: int, irq_of: Callable[[int], int], gsi_of: Callable[[int], int],
                line_of: Callable[[int], int]) -> None:
    counts: dict[type, int] = {}
    for n, spec in enumerate(ordered):
        kind_index = counts.get(type(spec), 0)
        counts[type(spec)] = kind_index + 1
        device = make_device(spec, kind_index, console_output)
        slot_base = base + n * stride
        line_irq = line_of(n)
        try:
            interrupt = _interrupt(vm, gsi_of(n), lambda level, irq=line_irq: vm.irq_line(irq, level))
        except BaseException:
            device.close()
            raise
        transport = MmioTransport(device, vm.memory, interrupt)
        worker = DeviceWorker(device.name)
        devices.slots.append(Slot(n, slot_base, irq_of(n), device, transport, worker, interrupt))
        mmio_bus.register(slot_base, MMIO_SIZE, transport)
        for q, fd in enumerate(transport.notify_fds):
            try:
                vm.ioeventfd(fd, slot_base + MMIO_QUEUE_NOTIFY, 4, datamatch=q)
            except OSError as err:  # QueueNotify then exits to userspace and `write` forwards it to the worker
                log.info("%s: KVM_IOEVENTFD refused (%s): notifications exit to userspace", device.name, err.strerror)
        transport.serve_on(worker)
        worker.start()
        log.debug("%s: virtio-mmio at %#x, irq %d via %s, %d queue(s)", device.name, slot_base, irq_of(n),
                  "KVM_IRQFD+resamplefd" if isinstance(interrupt, IrqfdInterrupt) else "KVM_IRQ_LINE",
                  len(transport.queues))


def attach_arm64(vm, mmio_bus: Bus, specs: list, console_output: Callable[[bytes], None]) -> VirtioDevices:
    from pyvmm.arch.arm64 import gic, layout

    first = layout.VIRTIO_MMIO_FIRST_SPI
    # On arm64 the irqfd GSI of an SPI is the SPI number (INTID - 32), KVM's default routing.
    return attach(vm, mmio_bus, specs, console_output, base=layout.VIRTIO_MMIO, stride=layout.VIRTIO_MMIO_STRIDE,
                  slots=layout.VIRTIO_MMIO_SLOTS, irq_of=lambda n: first + n, gsi_of=lambda n: first + n,
                  line_of=lambda n: gic.spi_irq_line(first + n))


X86_FIRST_GSI = 16  # IOAPIC pins 16-23: unused by the legacy ISA devices
X86_SLOTS = 8


def attach_x86_64(vm, mmio_bus: Bus, specs: list, console_output: Callable[[bytes], None]) -> VirtioDevices:
    from pyvmm.arch.x86_64 import layout

    return attach(vm, mmio_bus, specs, console_output, base=layout.MMIO_START, stride=MMIO_SIZE, slots=X86_SLOTS,
                  irq_of=lambda n: X86_FIRST_GSI + n, gsi_of=lambda n: X86_FIRST_GSI + n,
                  line_of=lambda n: X86_FIRST_GSI + n)
