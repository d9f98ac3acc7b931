"""The virtio-mmio transport, version 2 (virtio 1.2, 4.2): the register file a driver sees, over one device.

vCPU threads call `read`/`write` (register accesses exit to userspace). The device (pyvmm/devices/virtio/device.py)
never sees this class: on DRIVER_OK it is activated with queue handles and an interrupt that this module implements,
and its worker thread moves chains through them. One lock serialises both sides: it is held only for register
updates and ring bookkeeping, never across host I/O, so a vCPU never waits for a disk or a TAP. A reset bumps
`generation`, which retires every handle of the previous activation, and disabling a queue bumps its epoch, so
completions of requests taken before either are dropped instead of landing in a re-initialised ring.

Register reads have no side effects, so the device manager may let the guest read them from a read-only page
instead of exiting (`mirror_reads`): the transport then stores every value a read could observe into its window of
that page, under the lock and before the change can matter (InterruptStatus before the interrupt is signalled, any
register a write changed before the writing vCPU resumes). Writes still exit (or reach KVM's ioeventfd for
QueueNotify). Linux's vm_interrupt then costs one exit (the ACK) instead of two.

Interrupts (pyvmm/devices/virtio/interrupt.py): the InterruptStatus bit is set before the interrupt is signalled,
and InterruptACK clears it here. An edge line (arm64) is pulsed on every signal and needs nothing else. A level line
(x86_64) follows the register: with irqfd + resamplefd KVM lowers it when the guest EOIs and tells the worker, which
re-asserts it if InterruptStatus is still non-zero (`resample`); with KVM_IRQ_LINE it is raised with the first bit
and lowered when InterruptACK clears the last.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Protocol

from pyvmm.devices.virtio import constants as v
from pyvmm.devices.virtio.device import Interrupt, Queue, VhostRing, VirtioDevice
from pyvmm.devices.virtio.virtqueue import Chain, Memory, Virtqueue, VirtqueueError
from pyvmm.devices.virtio.worker import DeviceWorker
from pyvmm.errors import GuestMemoryError

log = logging.getLogger(__name__)

TRANSPORT_FEATURES = (1 << v.F_VERSION_1) | (1 << v.F_RING_INDIRECT_DESC) | (1 << v.F_RING_EVENT_IDX)
# The registers whose value depends on state (the selectors, the queue set-up, status, interrupts, generation): the
# mirror rewrites these after a change; the others are constants, written once.
STATEFUL_REGISTERS = (v.MMIO_DEVICE_FEATURES, v.MMIO_QUEUE_NUM_MAX, v.MMIO_QUEUE_NUM, v.MMIO_QUEUE_READY,
                      v.MMIO_INTERRUPT_STATUS, v.MMIO_STATUS, v.MMIO_QUEUE_DESC_LOW, v.MMIO_QUEUE_DESC_HIGH,
                      v.MMIO_QUEUE_DRIVER_LOW, v.MMIO_QUEUE_DRIVER_HIGH, v.MMIO_QUEUE_DEVICE_LOW,
                      v.MMIO_QUEUE_DEVICE_HIGH, v.MMIO_CONFIG_GENERATION)
ISR_WORD = v.MMIO_INTERRUPT_STATUS // 4


class InterruptLine(Protocol):
    """The device's interrupt line (pyvmm/devices/virtio/interrupt.py): edge (pulsed) or level (follows
    InterruptStatus)."""

    resample_fd: int | None  # signalled when the guest EOIs a level line (irqfd resample), else None

    def trigger(self) -> None:
        """InterruptStatus has a bit set: pulse an edge line, make sure a level line is asserted."""

    def lower(self) -> None:
        """InterruptStatus became zero through InterruptACK (a level line goes down)."""


class WarningLimit:
    """Guest-caused failures are logged at most `burst` times per `period` seconds per device: a guest that breaks
    and resets its device in a loop must not flood pyvmm's stderr. The rest go to the debug log, counted."""

    def __init__(self, burst: int = 5, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.period = period
        self.clock = clock
        self._window_start = -period
        self._logged = 0
        self.suppressed = 0

    def allow(self) -> bool:
        now = self.clock()
        if now - self._window_start >= self.period:
            self._window_start, self._logged = now, 0
        if self._logged < self.burst:
            self._logged += 1
            return True
        self.suppressed += 1
        return False


class MmioTransport:
    def __init__(self, device: VirtioDevice, memory: Memory, interrupt: InterruptLine) -> None:
        self.device = device
        self.name = f"virtio-mmio ({device.name})"
        self.memory = memory
        self.interrupt = interrupt
        self.lock = threading.Lock()
        self.queues = [Virtqueue(memory, size) for size in device.queue_sizes]
        # One eventfd per queue: KVM_IOEVENTFD writes it on QueueNotify (datamatch = queue index), and so does
        # `write` when an access reaches userspace; the device's worker waits on them.
        self.notify_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queues]
        self.device_features = device.features | TRANSPORT_FEATURES
        self.generation = 0
        self.warnings = WarningLimit()
        self._host_fds: _GuardedFds | None = None
        self._mirror: memoryview | None = None  # this slot's registers on a read-only page, as 32-bit words
        self.read_exits = 0  # register reads that reached `read` (--debug: none once mirrored)
        self._reset_state()

    def _reset_state(self) -> None:
        self.status = 0
        self.driver_features = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self.isr = 0
        self.config_generation = 0
        self.broken: str | None = None
        for queue in self.queues:
            queue.reset()

    def close(self) -> None:
        for fd in self.notify_fds:
            os.close(fd)
        self.notify_fds = []

    # -- wiring (once, before the worker starts) ----------------------------------------------------------------
    def serve_on(self, worker: DeviceWorker) -> None:
        """Let `worker` serve this device: queue kicks (except the queues a vhost backend serves), the interrupt's
        resamplefd and the device's own host fds; every callback runs under this transport's error policy."""
        self._host_fds = _GuardedFds(worker, self)
        vhost = set(self.device.vhost_queues)
        for index, fd in enumerate(self.notify_fds):
            if index not in vhost:
                worker.watch(fd, self._kick(index), eventfd=True)
        if self.interrupt.resample_fd is not None:
            worker.watch(self.interrupt.resample_fd, self.resample, eventfd=True)
        for fd, callback in self.device.watched_fds():
            self._host_fds.watch(fd, callback)

    def _kick(self, index: int) -> Callable[[], None]:
        """`notify(index)` as one closure, the worker's callback for the queue's eventfd: every request comes
        through here (`guarded` inlined, its message formatted only on an error)."""
        device_notify = self.device.notify

        def kick() -> None:
            if self.status & v.STATUS_DRIVER_OK and self.broken is None:
                try:
                    device_notify(index)
                except Exception as err:
                    self._failed(f"queue {index}", err)

        return kick

    def notify(self, index: int) -> None:
        """Worker thread: the driver kicked queue `index`. Ignored until the device is activated."""
        self._kick(index)()

    # -- negotiated state ---------------------------------------------------------------------------------------
    def negotiated(self, bit: int) -> bool:
        return bool(self.driver_features >> bit & 1)

    @property
    def running(self) -> bool:
        return bool(self.status & v.STATUS_DRIVER_OK) and self.broken is None

    # -- register file (vCPU threads) ---------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self.lock:
            self.read_exits += 1
            if offset == v.MMIO_INTERRUPT_STATUS and size == 4:  # every interrupt: first, not 8th, in the chain
                return self.isr
            if offset >= v.MMIO_CONFIG:
                config = self.device.config_space()
                start = offset - v.MMIO_CONFIG
                return int.from_bytes(config[start : start + size].ljust(size, b"\0"), "little")
            if size != 4:
                return 0  # the spec allows only 32-bit accesses to the registers
            return self._read_register(offset)

    def _read_register(self, offset: int) -> int:
        queue = self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None
        if offset == v.MMIO_MAGIC_VALUE:
            return v.MMIO_MAGIC
        if offset == v.MMIO_VERSION:
            return v.MMIO_VERSION_2
        if offset == v.MMIO_DEVICE_ID:
            return self.device.device_id
        if offset == v.MMIO_VENDOR_ID:
            return v.VENDOR_ID
        if offset == v.MMIO_DEVICE_FEATURES:
            return (self.device_features >> (32 * self.device_features_sel)) & 0xFFFF_FFFF \
                if self.device_features_sel < 2 else 0
        if offset == v.MMIO_QUEUE_NUM_MAX:
            return queue.max_size if queue else 0
        if offset == v.MMIO_QUEUE_READY:
            return int(queue.ready) if queue else 0
        if offset == v.MMIO_INTERRUPT_STATUS:
            return self.isr
        if offset == v.MMIO_STATUS:
            return self.status
        if offset in (v.MMIO_SHM_LEN_LOW, v.MMIO_SHM_LEN_HIGH):
            return 0xFFFF_FFFF  # no shared memory regions
        if offset == v.MMIO_CONFIG_GENERATION:
            return self.config_generation
        if queue is not None:
            for low, attr in ((v.MMIO_QUEUE_DESC_LOW, "desc"), (v.MMIO_QUEUE_DRIVER_LOW, "avail"),
                              (v.MMIO_QUEUE_DEVICE_LOW, "used")):
                if offset in (low, low + 4):
                    return (getattr(queue, attr) >> (32 if offset != low else 0)) & 0xFFFF_FFFF
            if offset == v.MMIO_QUEUE_NUM:
                return queue.size
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == v.MMIO_QUEUE_NOTIFY:
            # Normally KVM_IOEVENTFD consumes this write in the kernel; when it reaches us, hand it on the same way.
            if size == 4 and value < len(self.notify_fds):
                os.eventfd_write(self.notify_fds[value], 1)
            return
        with self.lock:
            if offset == v.MMIO_INTERRUPT_ACK and size == 4:  # every interrupt
                self.isr &= ~value
                if self._mirror is not None:
                    self._mirror[ISR_WORD] = self.isr
                if self.isr == 0:
                    self.interrupt.lower()
                return
            config = offset >= v.MMIO_CONFIG
            if config:
                if self.status & v.STATUS_DRIVER:
                    self.device.write_config(offset - v.MMIO_CONFIG, value.to_bytes(size, "little"))
            elif size == 4:
                self._write_register(offset, value)
            if self._mirror is not None:
                self._publish()  # before this vCPU resumes: its next read may be of what it just changed
                if config:
                    self._publish_config()

    def _write_register(self, offset: int, value: int) -> None:
        if offset == v.MMIO_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == v.MMIO_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == v.MMIO_DRIVER_FEATURES:
            if self.driver_features_sel < 2 and not self.status & v.STATUS_FEATURES_OK:
                shift = 32 * self.driver_features_sel
                self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift)) | (value << shift)
        elif offset == v.MMIO_QUEUE_SEL:
            self.queue_sel = value
        elif offset == v.MMIO_STATUS:
            self._write_status(value)
        elif self.queue_sel < len(self.queues):
            self._write_queue_register(self.queues[self.queue_sel], offset, value)

    def _write_status(self, value: int) -> None:
        if value == 0:
            self._reset()
            return
        if value & v.STATUS_FEATURES_OK and not self.status & v.STATUS_FEATURES_OK:
            unknown = self.driver_features & ~self.device_features
            if unknown or not self.negotiated(v.F_VERSION_1):
                # Leaving FEATURES_OK clear is how the spec refuses a feature set (the driver reads it back).
                log.info("%s: refusing driver features %#x", self.name, self.driver_features)
                value &= ~v.STATUS_FEATURES_OK
            else:
                for queue in self.queues:
                    queue.event_idx = self.negotiated(v.F_RING_EVENT_IDX)
                    queue.indirect = self.negotiated(v.F_RING_INDIRECT_DESC)
                self.device.ack_features(self.driver_features)
        starting = value & v.STATUS_DRIVER_OK and not self.status & v.STATUS_DRIVER_OK
        self.status = value | (self.status & v.STATUS_DEVICE_NEEDS_RESET)
        if not starting:
            return
        if not self.status & v.STATUS_FEATURES_OK:
            self._fail("DRIVER_OK without FEATURES_OK")  # 3.1.1: features are negotiated before the device runs
            return
        handles: list[Queue] = [_MmioQueue(self, index) for index in range(len(self.queues))]
        self.device.activate(self.memory, _MmioInterrupt(self), handles, self._host_fds)
        for fd in self.notify_fds:  # chains made available before DRIVER_OK
            os.eventfd_write(fd, 1)

    def _write_queue_register(self, queue: Virtqueue, offset: int, value: int) -> None:
        if offset == v.MMIO_QUEUE_READY:
            if value == 1 and not queue.ready:
                try:
                    queue.validate()
                except VirtqueueError as err:
                    self._fail(f"queue {self.queue_sel}: {err}")
                    return
                queue.ready = True
            elif value == 0:
                queue.disable()
            return
        if queue.ready:
            return  # the ring layout may change only while the queue is not ready
        if offset == v.MMIO_QUEUE_NUM:
            queue.size = value
        for low, attr in ((v.MMIO_QUEUE_DESC_LOW, "desc"), (v.MMIO_QUEUE_DRIVER_LOW, "avail"),
                          (v.MMIO_QUEUE_DEVICE_LOW, "used")):
            if offset == low:
                setattr(queue, attr, (getattr(queue, attr) & ~0xFFFF_FFFF) | value)
            elif offset == low + 4:
                setattr(queue, attr, (getattr(queue, attr) & 0xFFFF_FFFF) | (value << 32))

    def _reset(self) -> None:
        self.generation += 1
        self._reset_state()
        self.device.reset()
        self.interrupt.lower()

    # -- errors -------------------------------------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        """Lock held. The driver broke the protocol: this device stops until the driver resets it."""
        if self.broken is None:
            if self.warnings.allow():
                log.warning("%s: %s; device needs reset", self.name, reason)
            else:
                log.debug("%s: %s; device needs reset (%d such warnings suppressed)", self.name, reason,
                          self.warnings.suppressed)
        self.broken = reason
        self.status |= v.STATUS_DEVICE_NEEDS_RESET
        if self._mirror is not None:
            self._publish()  # the status, before the interrupt that makes the driver read it
        if self.status & v.STATUS_DRIVER_OK:
            self._signal(v.INT_CONFIG_CHANGE)

    def fail(self, reason: str) -> None:
        with self.lock:
            self._fail(reason)

    def guarded(self, what: str, action: Callable[..., None], *args: object) -> None:
        """Run device work on the worker; a malformed guest buffer or a bug stops this device only, never pyvmm."""
        try:
            action(*args)
        except Exception as err:
            self._failed(what, err)

    def _failed(self, what: str, err: Exception) -> None:
        if isinstance(err, (VirtqueueError, GuestMemoryError)):
            self.fail(f"{what}: {err}")
            return
        # a bug in a device must not take the VM down: park the device, say why
        if self.warnings.allow():
            log.error("%s: %s failed", self.name, what, exc_info=err)
        self.fail(f"{what}: internal error {type(err).__name__}: {err}")

    # -- the device side (worker thread, through the handles) ---------------------------------------------------
    def config_changed(self) -> None:
        with self.lock:
            if self._mirror is not None:
                # A driver reading the page meanwhile sees the generation change across any config bytes it read
                # half old, half new (4.2.2.1: it reads the generation before and after), so bump it on both sides.
                self.config_generation = (self.config_generation + 1) & 0xFFFF_FFFF
                self._mirror[v.MMIO_CONFIG_GENERATION // 4] = self.config_generation
                self._publish_config()
            self.config_generation = (self.config_generation + 1) & 0xFFFF_FFFF
            if self._mirror is not None:
                self._publish()  # the generation, before the interrupt
            if self.status & v.STATUS_DRIVER_OK:
                self._signal(v.INT_CONFIG_CHANGE)

    # -- the register mirror ------------------------------------------------------------------------------------
    def mirror_reads(self, window: memoryview | None) -> None:
        """Keep every register's value in `window` (this slot's MMIO_SIZE bytes of a read-only page that the guest
        reads instead of exiting: pyvmm.devices.manager) from now on; None: stop writing there (before the page
        goes away)."""
        with self.lock:
            if self._mirror is not None:
                self._mirror.release()
                self._mirror = None
            if window is None:
                return
            if len(window) != v.MMIO_SIZE:
                raise ValueError(f"a register window is {v.MMIO_SIZE:#x} bytes, not {len(window):#x}")
            self._mirror = window.cast("I")  # aligned 32-bit stores: a concurrent guest read sees old or new
            for offset in range(0, v.MMIO_CONFIG, 4):
                self._mirror[offset // 4] = self._read_register(offset)
            self._publish_config()

    def _publish(self) -> None:
        """Lock held, mirrored: store the registers that state changes can change."""
        mirror, read = self._mirror, self._read_register
        for offset in STATEFUL_REGISTERS:
            mirror[offset // 4] = read(offset)

    def _publish_config(self) -> None:
        config = self.device.config_space()[: v.MMIO_SIZE - v.MMIO_CONFIG]
        space = self._mirror.cast("B")[v.MMIO_CONFIG :]
        space[: len(config)] = config
        space[len(config) :] = bytes(len(space) - len(config))
        space.release()

    def _signal(self, bit: int) -> None:
        """Lock held: set an InterruptStatus bit, on the register page too, then signal the interrupt (4.2.3.4: the
        bit first; a vCPU taking the interrupt reads the page without exiting)."""
        self.isr |= bit
        if self._mirror is not None:
            self._mirror[ISR_WORD] = self.isr
        self.interrupt.trigger()

    def resample(self) -> None:
        """The guest EOI'd the level interrupt (irqfd resamplefd): re-assert while a status bit is still set."""
        with self.lock:
            if self.isr:
                self.interrupt.trigger()


class _MmioQueue(Queue):
    """A device's handle on one of the transport's queues, valid while the activation it was made for lasts."""

    def __init__(self, transport: MmioTransport, index: int) -> None:
        self._transport = transport
        self._queue = transport.queues[index]
        self._generation = transport.generation
        self.index = index

    # Hot path (every request): the liveness check is inlined, lock held: this activation's generation, DRIVER_OK,
    # not broken.
    def pop(self) -> Chain | None:
        chains = self.drain(1)
        return chains[0] if chains else None

    def drain(self, limit: int) -> list[Chain]:
        chains: list[Chain] = []
        transport = self._transport
        with transport.lock:
            if (self._generation != transport.generation or not transport.status & v.STATUS_DRIVER_OK
                    or transport.broken is not None):
                return chains
            try:
                return self._queue.take(limit)
            except VirtqueueError as err:
                transport._fail(f"queue {self.index}: {err}")
                return chains

    def complete_batch(self, done: list[tuple[Chain, int]]) -> None:
        if not done:
            return
        transport = self._transport
        with transport.lock:
            if self._generation != transport.generation or transport.broken is not None:
                return  # taken before a reset (the ring they came from no longer exists) or the device is stopped
            queue = self._queue
            try:
                wanted = queue.push_many(done)
            except VirtqueueError as err:
                transport._fail(f"queue {self.index}: {err}")
                return
            if wanted:
                transport._signal(v.INT_USED_BUFFER)

    def notify_later(self) -> None:
        fds = self._transport.notify_fds
        if self.index < len(fds):  # empty once the transport is closed
            os.eventfd_write(fds[self.index], 1)

    def vhost_ring(self) -> VhostRing | None:
        # No lock: called from `activate`, which already runs under it; a ready ring's layout cannot change.
        queue = self._queue
        if not queue.ready:
            return None
        return VhostRing(self.index, queue.size, queue.desc, queue.avail, queue.used, queue.last_avail,
                         self._transport.notify_fds[self.index])


class _MmioInterrupt(Interrupt):
    def __init__(self, transport: MmioTransport) -> None:
        self._transport = transport
        self._generation = transport.generation

    def signal_used(self) -> None:
        transport = self._transport
        with transport.lock:
            if self._generation == transport.generation:
                transport._signal(v.INT_USED_BUFFER)

    def signal_config(self) -> None:
        self._transport.config_changed()


class _GuardedFds:
    """The worker's watch list as a device sees it: callbacks run under the transport's error policy."""

    def __init__(self, worker: DeviceWorker, transport: MmioTransport) -> None:
        self._worker = worker
        self._transport = transport

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        what = f"{self._transport.device.name} host fd {fd}"
        self._worker.watch(fd, lambda: self._transport.guarded(what, callback))

    def unwatch(self, fd: int) -> None:
        self._worker.unwatch(fd)
