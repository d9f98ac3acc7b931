"""The virtio device contract (pyvmm/devices/virtio/device.py) as the transport fulfils it, and the guest-triggerable
transport and virtio-blk bugs of issue 12 item 3 (and item 1, blk's unbounded DISCARD payload), each kept fixed."""

from __future__ import annotations

import logging
import struct
import tracemalloc

from pyvmm.devices.virtio import blk as b
from pyvmm.devices.virtio import constants as v
from pyvmm.devices.virtio.config import DiskConfig
from pyvmm.devices.virtio.device import Interrupt, Queue, VirtioDevice
from pyvmm.devices.virtio.transport import WarningLimit
from pyvmm.devices.virtio.virtqueue import Chain
from tests.unit.test_virtio_devices import BUF, HDR, STATUS, image, started_blk  # noqa: F401 (fixture)
from tests.unit.test_virtio_queue import (
    AVAIL, DATA, RAM_BASE, RAM_SIZE, SECOND_BASE, SECOND_SIZE, make, needs_reset,
)


class RecordingDevice(VirtioDevice):
    """Keeps what activate gives it and serves nothing by itself: the test drives the queues."""

    name = "recording"
    device_id = 0x7E
    queue_sizes = (8, 4)

    def __init__(self) -> None:
        super().__init__()
        self.activations: list[tuple[object, Interrupt, list[Queue]]] = []

    def config_space(self) -> bytes:
        return b"\x01\x02"

    def activate(self, memory, interrupt, queues, host_fds=None) -> None:
        super().activate(memory, interrupt, queues, host_fds)
        self.activations.append((memory, interrupt, queues))

    def notify(self, index: int) -> None:
        pass


def test_buffers_in_both_regions_up_to_their_last_byte_are_views_of_exactly_their_descriptors():
    """The walk cuts buffers out of the region the previous one was in and looks a region up only when a buffer
    is outside it: switching regions, and a buffer that ends on a region's last byte, give exact views."""
    device = RecordingDevice()
    t, d, mem, irq, _ = make(device)
    assert d.start()
    buffers = [(RAM_BASE + RAM_SIZE - 5, 5), (SECOND_BASE, 3), (SECOND_BASE + SECOND_SIZE - 2, 2), (DATA, 4),
               (RAM_BASE + RAM_SIZE, 0)]
    for i, (gpa, length) in enumerate(buffers):
        mem.write(gpa, bytes(range(i * 16, i * 16 + length)))
    d.add(0, buffers, [(SECOND_BASE + 8, 6)])
    chain = device.queues[0].pop()
    assert [bytes(b) for b in chain.readable] == [bytes(range(i * 16, i * 16 + n)) for i, (_, n) in enumerate(buffers)]
    chain.writable[0][:] = b"abcdef"
    assert mem.read(SECOND_BASE + 8, 6) == b"abcdef" and not needs_reset(t)
    d.add(0, [(SECOND_BASE, 1), (SECOND_BASE + SECOND_SIZE - 2, 3)], [])  # one byte past the second region
    assert device.queues[0].pop() is None and needs_reset(t)
    t.close()


def test_activate_gives_memory_an_interrupt_and_one_queue_handle_per_queue():
    device = RecordingDevice()
    t, d, mem, irq, _ = make(device)
    assert device.activations == []
    assert d.start()
    (memory, interrupt, queues), = device.activations
    assert memory is mem and isinstance(interrupt, Interrupt)
    assert [q.index for q in queues] == [0, 1] and all(isinstance(q, Queue) for q in queues)
    assert device.negotiated(v.F_VERSION_1) and device.acked_features == t.driver_features
    t.close()


def test_queue_pop_complete_and_signal_used_reach_the_driver():
    device = RecordingDevice()
    t, d, mem, irq, _ = make(device)
    assert d.start()
    queue = device.queues[0]
    assert queue.pop() is None
    mem.write(DATA, b"ping")
    head = d.add(0, [(DATA, 4)], [(DATA + 0x100, 8)])
    chain = queue.pop()
    assert isinstance(chain, Chain) and chain.head == head
    # the buffers are views of guest RAM at the descriptors' addresses
    assert [bytes(buffer) for buffer in chain.readable] == [b"ping"] and [len(b) for b in chain.writable] == [8]
    chain.writable[0][:4] = b"pong"
    assert mem.read(DATA + 0x100, 4) == b"pong"
    queue.complete(chain, 3)
    assert d.used(0) == [(head, 3)]
    assert d.reg(v.MMIO_INTERRUPT_STATUS) == v.INT_USED_BUFFER and irq.triggers == 1
    d.reg(v.MMIO_INTERRUPT_ACK, v.INT_USED_BUFFER)
    device.interrupt.signal_used()  # e.g. a vhost backend returned buffers itself
    assert d.reg(v.MMIO_INTERRUPT_STATUS) == v.INT_USED_BUFFER and irq.triggers == 2
    generation = d.reg(v.MMIO_CONFIG_GENERATION)
    device.interrupt.signal_config()
    assert d.reg(v.MMIO_CONFIG_GENERATION) == generation + 1
    assert d.reg(v.MMIO_INTERRUPT_STATUS) == v.INT_USED_BUFFER | v.INT_CONFIG_CHANGE
    t.close()


def test_drain_is_bounded_and_the_default_notify_serves_every_chain():
    from tests.unit.test_virtio_queue import EchoDevice

    device = EchoDevice()
    device.batch = 2  # several drains for one notification
    t, d, mem, irq, _ = make(device)
    assert d.start()
    for i in range(5):
        mem.write(DATA + 16 * i, bytes([i, i + 1]))
        d.add(0, [(DATA + 16 * i, 2)], [(DATA + 0x200 + 16 * i, 2)])
    device.notify(0)
    assert [written for _, written in d.used(0)] == [2] * 5
    assert mem.read(DATA + 0x200 + 16 * 4, 2) == bytes([5, 4])
    assert device.queues[0].drain(10) == []
    t.close()


def test_vhost_ring_describes_a_ready_queue():
    device = RecordingDevice()
    t, d, mem, irq, _ = make(device)
    assert d.start()
    desc, avail, used, size = d.rings[1]
    ring = device.queues[1].vhost_ring()
    assert (ring.index, ring.size, ring.desc, ring.avail, ring.used, ring.next_avail) == (1, size, desc, avail,
                                                                                          used, 0)
    assert ring.kick_fd == t.notify_fds[1]
    t.close()


# -- issue 12 item 3 ---------------------------------------------------------------------------------------------
def test_disabling_and_shrinking_a_queue_with_a_chain_in_flight_drops_the_completion():
    """QUEUE_READY=0 then QUEUE_NUM=0 while the device holds a chain: was a ZeroDivisionError in push."""
    device = RecordingDevice()
    t, d, mem, irq, _ = make(device)
    assert d.start()
    d.add(0, [(DATA, 4)], [(DATA + 0x100, 4)])
    chain = device.queues[0].pop()
    d.reg(v.MMIO_QUEUE_SEL, 0)
    d.reg(v.MMIO_QUEUE_READY, 0)
    d.reg(v.MMIO_QUEUE_NUM, 0)
    device.queues[0].complete(chain, 4)
    assert not needs_reset(t) and mem.read_int(d.rings[0][2] + 2, 2) == 0  # nothing pushed
    # the driver sets the ring up again: the old chain still does not land in it
    d.reg(v.MMIO_QUEUE_NUM, 8)
    d.reg(v.MMIO_QUEUE_READY, 1)
    device.queues[0].complete(chain, 4)
    assert mem.read_int(d.rings[0][2] + 2, 2) == 0
    t.close()


def test_driver_ok_without_features_ok_needs_reset_and_a_notify_is_harmless():
    """Was an AttributeError ('NoneType' has no attribute 'take') on the worker."""
    from tests.unit.test_virtio_queue import EchoDevice

    device = EchoDevice()
    t, d, mem, irq, _ = make(device)
    d.reg(v.MMIO_STATUS, v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER)
    d.reg(v.MMIO_STATUS, v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER | v.STATUS_DRIVER_OK)
    assert needs_reset(t) and device.activated == 0
    device.notify(0)  # a worker callback racing the status write
    t.notify(0)
    t.write(v.MMIO_QUEUE_NOTIFY, 4, 0)
    assert d.start() and not needs_reset(t)  # a reset brings it back
    t.close()


def test_blk_status_goes_to_the_last_byte_of_the_writable_part_not_before_a_zero_length_descriptor(image):
    device, t, d, mem = started_blk(DiskConfig(image))
    mem.write(HDR, struct.pack("<IIQ", b.T_IN, 0, 0))
    mem.write(BUF, b"\xee" * 0x40)
    d.add(0, [(HDR, 16)], [(BUF, 513), (BUF + 0x400, 0)])  # data + status, then an empty descriptor
    device.notify(0)
    (_, written), = d.used(0)
    assert written == 513 and mem.read_int(BUF + 512, 1) == b.S_OK
    assert mem.read(BUF + 0x3F0, 0x10) == bytes(0x10) and mem.read_int(BUF + 0x3FF, 1) == 0  # untouched
    device.close()
    t.close()


def test_blk_request_whose_writable_part_is_empty_needs_reset(image):
    device, t, d, mem = started_blk(DiskConfig(image))
    mem.write(HDR, struct.pack("<IIQ", b.T_FLUSH, 0, 0))
    mem.write_int(STATUS - 1, 1, 0x5A)
    d.add(0, [(HDR, 16)], [(STATUS, 0)])
    t.notify(0)
    assert needs_reset(t) and mem.read_int(STATUS - 1, 1) == 0x5A and d.used(0) == []
    device.close()
    t.close()


def test_guest_caused_failures_are_logged_at_a_bounded_rate(caplog):
    from tests.unit.test_virtio_queue import EchoDevice

    t, d, mem, irq, dev = make(EchoDevice())
    with caplog.at_level(logging.DEBUG, logger="pyvmm.devices.virtio.transport"):
        for _ in range(50):  # a guest that breaks its device and resets it in a loop
            mem.write_int(AVAIL + 2, 2, 0)  # the driver's fresh ring
            assert d.start()
            mem.write_int(AVAIL + 2, 2, 1000)  # avail index far ahead
            t.notify(0)
            assert needs_reset(t)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= WarningLimit().burst
    assert t.warnings.suppressed == 50 - len(warnings)
    t.close()


def test_warning_limit_opens_again_after_its_period():
    now = [0.0]
    limit = WarningLimit(burst=2, period=10, clock=lambda: now[0])
    assert [limit.allow() for _ in range(4)] == [True, True, False, False]
    now[0] = 10.5
    assert limit.allow() and limit.suppressed == 2


# -- issue 12 item 1 ---------------------------------------------------------------------------------------------
def test_blk_discard_payload_is_bounded_before_anything_is_copied(image):
    """A WRITE_ZEROES whose data descriptor claims all of guest RAM: refused without copying it (was joined into
    one bytes object first: 1 descriptor of a 256 MiB guest cost 275 MiB)."""
    device, t, d, mem = started_blk(DiskConfig(image))
    mem.write(HDR, struct.pack("<IIQ", b.T_WRITE_ZEROES, 0, 0))
    mem.write(RAM_BASE, struct.pack("<QII", 0, 1, 0))
    before = image.read_bytes()
    tracemalloc.start()
    try:
        d.add(0, [(HDR, 16), (RAM_BASE, RAM_SIZE)], [(STATUS, 1)])
        device.notify(0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mem.read_int(STATUS, 1) == b.S_IOERR
    assert peak < RAM_SIZE // 4, f"{peak} bytes allocated for a {RAM_SIZE}-byte descriptor"
    assert image.read_bytes() == before
    # a request of exactly the advertised maximum (one 16-byte segment) still works
    mem.write(BUF, struct.pack("<QII", 2, 1, 0))
    d.add(0, [(HDR, 16), (BUF, 16)], [(STATUS, 1)])
    device.notify(0)
    assert mem.read_int(STATUS, 1) == b.S_OK and image.read_bytes()[1024:1536] == bytes(512)
    # two segments exceed max_write_zeroes_seg (1, in config space at offset 52)
    assert t.read(v.MMIO_CONFIG + 52, 4) == b.MAX_SEGMENTS == 1
    mem.write(BUF, struct.pack("<QII", 2, 1, 0) * 2)
    d.add(0, [(HDR, 16), (BUF, 32)], [(STATUS, 1)])
    device.notify(0)
    assert mem.read_int(STATUS, 1) == b.S_IOERR
    device.close()
    t.close()
