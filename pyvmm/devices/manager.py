"""The device manager: places every device of a VM (bus, address, interrupt), wires it to KVM, and records the
placements that the arch code renders for the guest (device-tree nodes on arm64, kernel parameters on x86_64).

Models: Firecracker's MMIODeviceManager and kvmtool's device__register with its single iotrap registry. The arch
builder passes its layout in (the virtio-mmio slot window and how an interrupt number becomes a KVM_IRQ_LINE
argument): devices/ never imports arch.

Virtio devices get the next free slot: base = window.base + n * window.stride, irq = window.first_irq + n. Queue
notifications are KVM_IOEVENTFDs on QueueNotify (datamatch = queue index). The interrupt is edge- or level-triggered
as the window says (pyvmm/devices/virtio/interrupt.py): edge is a KVM_IRQFD without resample (every signal pulses
the line; the placement records the trigger so the arch tells the guest), level a KVM_IRQFD with a resamplefd; where
KVM lacks the irqfd capability that needs, KVM_IRQ_LINE. One worker thread per device serves it. The guest reads the
virtio registers from read-only pages over the slots (`mirror_virtio_registers`; the transports keep them current),
so only writes exit. `close()` stops the devices before the VM's memory goes away.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, NamedTuple

from pyvmm.devices.bus import Bus, Device
from pyvmm.devices.debuglog import debug
from pyvmm.devices.placement import BUS_MMIO, BUS_PIO, GuestIdentity, Placement
from pyvmm.devices.virtio.constants import MMIO_QUEUE_NOTIFY, MMIO_SIZE
from pyvmm.errors import UsageError

if TYPE_CHECKING:
    from pyvmm.devices.coalesced import CoalescedZone, QueuedWriteDevice
    from pyvmm.devices.mirror import MirroredDevice, PageMirror
    from pyvmm.devices.virtio.config import DeviceConfig
    from pyvmm.devices.virtio.device import VirtioDevice
    from pyvmm.devices.virtio.interrupt import IrqfdInterrupt, LineInterrupt
    from pyvmm.devices.virtio.transport import MmioTransport
    from pyvmm.devices.virtio.worker import DeviceWorker
    from pyvmm.kvm.readonly import ReadOnlyPage
    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.kvm.vm import Vm

# The virtio modules (transport, worker, logging) are imported when a VM has virtio devices: a VM without any starts
# some 20 ms sooner.

VIRTIO_MMIO = GuestIdentity("virtio_mmio", ("virtio,mmio",), (("dma-coherent", True),))


class SlotWindow(NamedTuple):
    """The arch layout's run of virtio-mmio slots, each with its own interrupt."""

    base: int
    stride: int
    count: int
    first_irq: int  # arm64: SPI number (also its irqfd GSI, KVM's default routing); x86_64: IOAPIC GSI
    edge: bool = False  # edge-triggered interrupts (arm64: EDGE_RISING in the DT); else level (x86_64's IOAPIC pins)


class VirtioSlot(NamedTuple):
    placement: Placement
    device: VirtioDevice
    transport: MmioTransport
    worker: DeviceWorker
    interrupt: IrqfdInterrupt | LineInterrupt


class DeviceManager:
    def __init__(self, vm: Vm, virtio_window: SlotWindow, irq_line_arg: Callable[[int], int]) -> None:
        """`irq_line_arg(irq)`: the KVM_IRQ_LINE `irq` argument for a placement's irq (arm64 encodes type and INTID)."""
        if virtio_window.stride < MMIO_SIZE:
            raise ValueError(f"virtio-mmio stride {virtio_window.stride:#x} is smaller than a slot ({MMIO_SIZE:#x})")
        self.vm = vm
        self.mmio = Bus("MMIO")
        self.pio = Bus("port I/O")
        self.placements: list[Placement] = []
        self.virtio: list[VirtioSlot] = []
        self._window = virtio_window
        self._irq_line_arg = irq_line_arg
        self.coalesced: CoalescedZone | None = None
        self.mirror: tuple[MirroredDevice, PageMirror] | None = None
        self.virtio_pages: list[tuple[ReadOnlyPage, list[VirtioSlot]]] = []  # read-only pages over virtio slots

    def irq_setter(self, irq: int) -> Callable[[int], None]:
        """A level setter for a device's interrupt line (KVM_IRQ_LINE)."""
        vm, line = self.vm, self._irq_line_arg(irq)
        return lambda level: vm.irq_line(line, level)

    def add(self, device: Device, identity: GuestIdentity, *, base: int, size: int, irq: int | None = None,
            bus: str = BUS_MMIO, edge: bool = False) -> Placement:
        """Register a device at a fixed place (the arch layout's) and record it; `edge`: its interrupt is
        edge-triggered (else level)."""
        placement = Placement(identity, bus, base, size, irq, edge)
        (self.pio if bus == BUS_PIO else self.mmio).register(base, size, device)
        self.placements.append(placement)
        return placement

    def coalesce_writes(self, device: QueuedWriteDevice, placement: Placement, offset: int, size: int,
                        vcpu: Vcpu) -> bool:
        """Let KVM queue the guest's writes to [offset, offset + size) of a placed device in the VM's coalesced ring
        (mapped through `vcpu`) instead of exiting (pyvmm.devices.coalesced). False, and every write exits as
        before, where KVM lacks coalesced MMIO (or PIO, for a port I/O device) or refuses the zone."""
        from pyvmm_bindings import constants as c

        from pyvmm.devices.coalesced import CoalescedZone

        if self.coalesced is not None:
            raise ValueError("one device per VM may queue writes: the coalesced ring has one consumer")
        pio = placement.bus == BUS_PIO
        page_offset = self.vm.check_extension(c.KVM_CAP_COALESCED_MMIO)
        if not page_offset or (pio and not self.vm.check_extension(c.KVM_CAP_COALESCED_PIO)):
            return False
        address = placement.base + offset
        try:
            ring = vcpu.coalesced_ring(page_offset)
        except (OSError, ValueError) as err:
            import logging

            logging.getLogger(__name__).info("%s: no coalesced ring (%s): every write exits", device.name, err)
            return False
        try:
            self.vm.coalesce_writes(address, size, pio=pio)
        except OSError as err:
            ring.close()
            import logging

            logging.getLogger(__name__).info("%s: KVM refused a coalesced zone (%s): every write exits", device.name,
                                             err.strerror)
            return False
        self.coalesced = CoalescedZone(ring, device, address, size, pio)
        self.coalesced.start()
        debug(__name__, "%s: writes to %#x (%d byte(s), %s) coalesced in KVM's ring of %d", device.name, address, size,
              "port" if pio else "MMIO", ring.size)
        return True

    def mirror_reads(self, device: MirroredDevice, placement: Placement) -> bool:
        """Let the guest read a placed MMIO device's registers from a read-only page while the device says reads
        are free of side effects (pyvmm.devices.mirror). False, and every read exits as before, where KVM lacks
        read-only slots or a host page would cover more than the device."""
        import mmap

        from pyvmm.devices.mirror import PageMirror

        if self.mirror is not None:
            raise ValueError("one device per VM has a register mirror")
        if placement.bus != BUS_MMIO or placement.base % mmap.PAGESIZE or placement.size < mmap.PAGESIZE:
            debug(__name__, "%s: no register mirror: a %d-byte host page does not fit its %#x bytes at %#x",
                  device.name, mmap.PAGESIZE, placement.size, placement.base)
            return False
        try:
            page = self.vm.readonly_page(placement.base)
        except OSError as err:
            debug(__name__, "%s: no register mirror (%s): every read exits", device.name, err.strerror)
            return False
        self.mirror = (device, PageMirror(page))
        if not device.mirror_reads(self.mirror[1]):
            return False  # KVM refused the slot update: the device warned, its reads exit; the page goes at close
        debug(__name__, "%s: register reads served from a read-only page at %#x while free of side effects",
              device.name, placement.base)
        return True

    def _close_mirror(self) -> None:
        mirrored, self.mirror = self.mirror, None
        if mirrored is None:
            return
        device, mirror = mirrored
        try:
            device.mirror_reads(None)
        finally:
            mirror.close()
        debug(__name__, "%s: %d register reads exited; the read-only page was mapped or unmapped %d times", device.name,
              device.read_exits, mirror.page.changes)

    def flush(self) -> None:
        """Apply the writes KVM still holds queued (the vCPUs have stopped: the guest's last output)."""
        if self.coalesced is not None:
            self.coalesced.device.flush()

    # -- virtio -------------------------------------------------------------------------------------------------
    def add_virtio_devices(self, specs: list["DeviceConfig"], console_output: Callable[[bytes], None]) -> None:
        """Build and place every configured virtio device, in slot order (pyvmm.devices.virtio.catalog)."""
        if len(specs) > self._window.count:
            raise UsageError(f"{len(specs)} virtio devices asked for: this machine has {self._window.count} "
                             f"virtio-mmio slots")
        if not specs:
            return  # no virtio module is imported for a VM without virtio devices
        from pyvmm.devices.virtio import catalog

        counts: dict[type, int] = {}
        for spec in catalog.in_slot_order(specs):
            index = counts.get(type(spec), 0)
            counts[type(spec)] = index + 1
            self.add_virtio(catalog.make_device(spec, index, console_output))
        self.mirror_virtio_registers()

    def mirror_virtio_registers(self) -> int:
        """Map a read-only page over each host page of virtio slots in use, on which their transports keep every
        register's value: the guest's register reads (InterruptStatus on each interrupt, the probe's) then cost no
        exit. A virtio-mmio read has no side effects, so the pages stay mapped for good. Once, after the devices are
        added. Returns how many pages are mapped: none where KVM lacks read-only slots or a host page reaches outside
        the slot window (64 KiB pages over a smaller window); reads then exit as before."""
        import mmap

        if self.virtio_pages:
            raise ValueError("the virtio register pages are mapped once, after every virtio device is added")
        size, window = mmap.PAGESIZE, self._window
        end = window.base + window.count * window.stride
        pages: dict[int, list[VirtioSlot]] = {}
        for slot in self.virtio:
            pages.setdefault(slot.placement.base - slot.placement.base % size, []).append(slot)
        for base, slots in pages.items():
            if base < window.base or base + size > end:
                debug(__name__, "virtio-mmio: no read-only register page: a %d-byte host page at %#x reaches outside "
                      "the slots (%#x-%#x)", size, base, window.base, end)
                return len(self.virtio_pages)
            try:
                page = self.vm.readonly_page(base)
            except OSError as err:
                debug(__name__, "virtio-mmio: no read-only register page (%s): every register read exits", err.strerror)
                return len(self.virtio_pages)
            registers = memoryview(page.buffer)
            for slot in slots:
                offset = slot.placement.base - base
                slot.transport.mirror_reads(registers[offset : offset + MMIO_SIZE])
            registers.release()
            try:
                page.show()
            except OSError as err:
                self._unmirror(page, slots)
                debug(__name__, "virtio-mmio: KVM refused a read-only register page (%s): every register read exits",
                      err.strerror)
                return len(self.virtio_pages)
            self.virtio_pages.append((page, slots))
            debug(__name__, "virtio-mmio: register reads of %s served from a read-only page at %#x",
                  ", ".join(slot.device.name for slot in slots), base)
        return len(self.virtio_pages)

    @staticmethod
    def _unmirror(page: ReadOnlyPage, slots: list[VirtioSlot]) -> None:
        for slot in slots:
            slot.transport.mirror_reads(None)  # under its lock: no store into the page after this
        page.close()

    def add_virtio(self, device: VirtioDevice) -> VirtioSlot:
        """Put a virtio device in the next free slot, wire its notifications and interrupt, start its worker."""
        from pyvmm.devices.virtio.transport import MmioTransport
        from pyvmm.devices.virtio.worker import DeviceWorker

        n = len(self.virtio)
        if n >= self._window.count:
            device.close()
            raise UsageError(f"this machine has {self._window.count} virtio-mmio slots: no room for {device.name}")
        irq = self._window.first_irq + n
        try:
            interrupt = self._interrupt(irq)
        except BaseException:
            device.close()
            raise
        transport = MmioTransport(device, self.vm.memory, interrupt)
        worker = DeviceWorker(device.name)
        slot = VirtioSlot(self.add(transport, VIRTIO_MMIO, base=self._window.base + n * self._window.stride,
                                   size=MMIO_SIZE, irq=irq, edge=self._window.edge), device, transport, worker,
                           interrupt)
        self.virtio.append(slot)  # from here on close() stops it
        self._serve(slot)
        return slot

    def _interrupt(self, irq: int) -> IrqfdInterrupt | LineInterrupt:
        import logging

        from pyvmm_bindings import constants as c

        from pyvmm.devices.virtio.interrupt import IrqfdInterrupt, LineInterrupt

        level = not self._window.edge
        if self.vm.check_extension(c.KVM_CAP_IRQFD_RESAMPLE if level else c.KVM_CAP_IRQFD):
            try:
                return IrqfdInterrupt(self.vm, irq, level)
            except OSError as err:
                logging.getLogger(__name__).info("KVM_IRQFD%s refused (%s): using KVM_IRQ_LINE",
                                                 " with resample" if level else "", err.strerror)
        return LineInterrupt(self.irq_setter(irq), level)

    def _serve(self, slot: VirtioSlot) -> None:
        import logging

        log = logging.getLogger(__name__)
        device, transport, worker = slot.device, slot.transport, slot.worker
        for q, fd in enumerate(transport.notify_fds):
            try:
                self.vm.ioeventfd(fd, slot.placement.base + MMIO_QUEUE_NOTIFY, 4, datamatch=q)
            except OSError as err:  # QueueNotify then exits to userspace and `write` forwards it to the worker
                log.info("%s: KVM_IOEVENTFD refused (%s): notifications exit to userspace", device.name, err.strerror)
        transport.serve_on(worker)
        worker.start()
        log.debug("%s: virtio-mmio at %#x, irq %d via %s, %d queue(s)", device.name, slot.placement.base,
                  slot.placement.irq, slot.interrupt.kind, len(transport.queues))

    def find(self, kind: type) -> list[VirtioDevice]:
        return [slot.device for slot in self.virtio if isinstance(slot.device, kind)]

    def console_input(self) -> Callable[[bytes], None] | None:
        """Where typed input goes when the guest's console is a virtio console (hvc0), else None."""
        if not self.virtio:
            return None
        from pyvmm.devices.virtio.console import Console

        consoles = self.find(Console)
        return consoles[0].feed if consoles else None

    def close(self) -> None:
        """Drain the coalesced ring; take the register mirror down; stop the virtio devices (their workers use guest
        RAM) and take them off the bus."""
        zone, self.coalesced = self.coalesced, None
        try:
            try:
                if zone is not None:
                    zone.close()
            finally:
                self._close_mirror()
        finally:
            self._close_virtio()

    def _close_virtio(self) -> None:
        pages, self.virtio_pages = self.virtio_pages, []
        for page, slots in pages:
            self._unmirror(page, slots)
        for slot in self.virtio:
            debug(__name__, "%s: %d register reads exited", slot.transport.name, slot.transport.read_exits)
            # The device's fds close after its worker has stopped: at once, or when a worker stuck in host I/O
            # returns (closing them under it could hand their numbers to new fds it would then write).
            slot.worker.close(then=partial(_release, slot))
            self.mmio.unregister(slot.transport)
        gone = {id(slot.placement) for slot in self.virtio}
        self.placements = [p for p in self.placements if id(p) not in gone]
        self.virtio.clear()


def _release(slot: VirtioSlot) -> None:
    if activity := slot.device.activity():  # the worker has stopped: the counts are final
        debug(__name__, "%s: %s", slot.device.name, activity)
    slot.device.close()
    slot.interrupt.close()
    slot.transport.close()
