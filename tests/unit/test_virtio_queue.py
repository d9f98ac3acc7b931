"""virtio-mmio transport and split virtqueues against a guest-memory model, including hostile queues (hypothesis).

Also holds the memory model and the small driver the other tests/unit/test_virtio_*.py modules import.
"""

from __future__ import annotations

import os
import struct
import time
from unittest import mock

import cffi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.devices.virtio import constants as v
from pyvmm.devices.virtio import virtqueue
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.transport import TRANSPORT_FEATURES, MmioTransport
from pyvmm.devices.virtio.virtqueue import Chain, Virtqueue, VirtqueueError, read_from, write_to
from pyvmm.errors import GuestMemoryError

RAM_BASE = 0x4000_0000
RAM_SIZE = 1 << 18
HOLE_BASE = RAM_BASE + RAM_SIZE  # a second region after a 64 KiB hole: buffers must not straddle the gap
SECOND_BASE = HOLE_BASE + 0x1_0000
SECOND_SIZE = 0x1_0000


class ModelMemory:
    """Guest RAM as bytearrays; every access is checked and recorded, like pyvmm.kvm.memory.GuestMemory."""

    def __init__(self, regions=((RAM_BASE, RAM_SIZE), (SECOND_BASE, SECOND_SIZE))) -> None:
        self.regions = [(base, bytearray(size)) for base, size in regions]
        self.accesses: list[tuple[int, int]] = []

    def view(self, gpa: int, length: int) -> memoryview:
        if gpa < 0 or length < 0:
            raise GuestMemoryError(f"invalid range {gpa:#x}+{length:#x}")
        for base, data in self.regions:
            if base <= gpa and gpa + length <= base + len(data):
                self.accesses.append((gpa, length))
                return memoryview(data)[gpa - base : gpa - base + length]
        raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")

    def region_at(self, gpa: int) -> tuple[int, memoryview]:
        for base, data in self.regions:
            if base <= gpa <= base + len(data):
                return base, memoryview(data)
        raise GuestMemoryError(f"guest address {gpa:#x} is outside guest RAM")

    def read_int(self, gpa: int, size: int) -> int:
        return int.from_bytes(self.view(gpa, size), "little")

    def write_int(self, gpa: int, size: int, value: int) -> None:
        self.view(gpa, size)[:] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def write(self, gpa: int, data: bytes) -> None:
        self.view(gpa, len(data))[:] = data

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def inside(self, gpa: int, length: int) -> bool:
        return any(base <= gpa and gpa + length <= base + len(data) for base, data in self.regions)

    def snapshot(self) -> list[bytes]:
        return [bytes(data) for _, data in self.regions]


class RecordingInterrupt:
    resample_fd = None

    def __init__(self) -> None:
        self.triggers = 0
        self.lowers = 0

    def trigger(self) -> None:
        self.triggers += 1

    def lower(self) -> None:
        self.lowers += 1


class EchoDevice(VirtioDevice):
    """A minimal device for transport tests: answers each chain with its readable bytes reversed."""

    name = "echo"
    device_id = 0x7F
    queue_sizes = (16,)
    features = 1 << 3

    def __init__(self) -> None:
        super().__init__()
        self.activated = 0
        self.resets = 0

    def activate(self, memory, interrupt, queues, host_fds=None) -> None:
        super().activate(memory, interrupt, queues, host_fds)
        self.activated += 1

    def reset(self) -> None:
        super().reset()
        self.resets += 1

    def config_space(self) -> bytes:
        return bytes(range(8))

    def serve(self, index: int, chain: Chain) -> int:
        data = read_from(chain.readable, 4096)[::-1]
        return write_to(chain.writable, data)


# Ring placement used by the driver below (inside the first region).
DESC = RAM_BASE + 0x1000
AVAIL = RAM_BASE + 0x3000
USED = RAM_BASE + 0x4000
DATA = RAM_BASE + 0x10000


class Driver:
    """The driver side, as Linux's virtio_mmio + virtio_ring do it, through the transport's registers."""

    def __init__(self, transport: MmioTransport, memory, size: int | None = None) -> None:
        self.t = transport
        self.memory = memory
        self.size = size
        self.next_desc = [0] * len(transport.queues)
        self.avail_idx = [0] * len(transport.queues)
        self.rings: list[tuple[int, int, int, int]] = []

    def reg(self, offset: int, value: int | None = None) -> int:
        if value is None:
            return self.t.read(offset, 4)
        self.t.write(offset, 4, value)
        return value

    def device_features(self) -> int:
        self.reg(v.MMIO_DEVICE_FEATURES_SEL, 0)
        low = self.reg(v.MMIO_DEVICE_FEATURES)
        self.reg(v.MMIO_DEVICE_FEATURES_SEL, 1)
        return low | self.reg(v.MMIO_DEVICE_FEATURES) << 32

    def start(self, features: int | None = None) -> bool:
        assert self.reg(v.MMIO_MAGIC_VALUE) == v.MMIO_MAGIC and self.reg(v.MMIO_VERSION) == 2
        self.reg(v.MMIO_STATUS, 0)
        self.reg(v.MMIO_STATUS, v.STATUS_ACKNOWLEDGE)
        self.reg(v.MMIO_STATUS, v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER)
        wanted = self.device_features() if features is None else features
        for sel in (0, 1):
            self.reg(v.MMIO_DRIVER_FEATURES_SEL, sel)
            self.reg(v.MMIO_DRIVER_FEATURES, (wanted >> 32 * sel) & 0xFFFF_FFFF)
        status = v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER | v.STATUS_FEATURES_OK
        self.reg(v.MMIO_STATUS, status)
        if not self.reg(v.MMIO_STATUS) & v.STATUS_FEATURES_OK:
            return False
        for q in range(len(self.t.queues)):
            base = 0x8000 * q
            size = self.size or self.reg_queue_max(q)
            self.reg(v.MMIO_QUEUE_SEL, q)
            self.reg(v.MMIO_QUEUE_NUM, size)
            for low, addr in ((v.MMIO_QUEUE_DESC_LOW, DESC + base), (v.MMIO_QUEUE_DRIVER_LOW, AVAIL + base),
                              (v.MMIO_QUEUE_DEVICE_LOW, USED + base)):
                self.reg(low, addr & 0xFFFF_FFFF)
                self.reg(low + 4, addr >> 32)
            self.reg(v.MMIO_QUEUE_READY, 1)
            self.rings.append((DESC + base, AVAIL + base, USED + base, size))
        self.reg(v.MMIO_STATUS, status | v.STATUS_DRIVER_OK)
        return True

    def reg_queue_max(self, q: int) -> int:
        self.reg(v.MMIO_QUEUE_SEL, q)
        return self.reg(v.MMIO_QUEUE_NUM_MAX)

    def desc(self, q: int, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.memory.write(self.rings[q][0] + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))

    def add(self, q: int, readable: list[tuple[int, int]], writable: list[tuple[int, int]],
            indirect_at: int | None = None) -> int:
        desc, avail, used, size = self.rings[q]
        buffers = [(a, n, 0) for a, n in readable] + [(a, n, v.DESC_F_WRITE) for a, n in writable]
        head = self.next_desc[q] % size
        if indirect_at is None:
            indices = [(head + i) % size for i in range(len(buffers))]
            for i, (addr, length, flags) in enumerate(buffers):
                last = i == len(buffers) - 1
                self.desc(q, indices[i], addr, length, flags | (0 if last else v.DESC_F_NEXT),
                          0 if last else indices[i + 1])
            self.next_desc[q] += len(buffers)
        else:
            for i, (addr, length, flags) in enumerate(buffers):
                last = i == len(buffers) - 1
                self.memory.write(indirect_at + 16 * i, struct.pack(
                    "<QIHH", addr, length, flags | (0 if last else v.DESC_F_NEXT), 0 if last else i + 1))
            self.desc(q, head, indirect_at, 16 * len(buffers), v.DESC_F_INDIRECT, 0)
            self.next_desc[q] += 1
        self.publish(q, head)
        return head

    def publish(self, q: int, head: int) -> None:
        desc, avail, used, size = self.rings[q]
        self.memory.write_int(avail + 4 + 2 * (self.avail_idx[q] % size), 2, head)
        self.avail_idx[q] = (self.avail_idx[q] + 1) & 0xFFFF
        self.memory.write_int(avail + 2, 2, self.avail_idx[q])

    def used(self, q: int) -> list[tuple[int, int]]:
        desc, avail, used, size = self.rings[q]
        count = self.memory.read_int(used + 2, 2)
        return [struct.unpack("<II", self.memory.read(used + 4 + 8 * (i % size), 8)) for i in range(count)]


def make(device=None, memory=None, size=None):
    memory = memory or ModelMemory()
    device = device or EchoDevice()
    irq = RecordingInterrupt()
    transport = MmioTransport(device, memory, irq)
    return transport, Driver(transport, memory, size), memory, irq, device


# -- transport -------------------------------------------------------------------------------------------------
def test_registers_identify_a_version_2_device_with_the_transport_features():
    t, d, *_ = make()
    assert d.reg(v.MMIO_MAGIC_VALUE) == 0x74726976
    assert d.reg(v.MMIO_VERSION) == 2
    assert d.reg(v.MMIO_DEVICE_ID) == 0x7F
    assert d.device_features() == (1 << 3) | TRANSPORT_FEATURES
    assert t.read(v.MMIO_CONFIG + 2, 2) == 0x0302  # config space, little-endian
    t.close()


def test_feature_negotiation_refuses_unknown_bits_and_missing_version_1():
    t, d, *_ = make()
    assert not d.start(features=1 << 3)  # no VERSION_1: FEATURES_OK stays clear
    assert not d.start(features=(1 << v.F_VERSION_1) | (1 << 40))  # a bit the device never offered
    assert d.start()
    t.close()


def test_a_chain_is_served_and_the_interrupt_follows_the_status_bit():
    t, d, mem, irq, dev = make()
    assert d.start() and dev.activated == 1
    mem.write(DATA, b"hello")
    head = d.add(0, [(DATA, 5)], [(DATA + 0x100, 5)])
    dev.notify(0)
    assert d.used(0) == [(head, 5)]
    assert mem.read(DATA + 0x100, 5) == b"olleh"
    assert d.reg(v.MMIO_INTERRUPT_STATUS) == v.INT_USED_BUFFER and irq.triggers == 1
    lowered = irq.lowers
    d.reg(v.MMIO_INTERRUPT_ACK, v.INT_USED_BUFFER)
    assert d.reg(v.MMIO_INTERRUPT_STATUS) == 0 and irq.lowers == lowered + 1
    t.close()


def test_indirect_descriptors_are_followed():
    t, d, mem, irq, dev = make()
    d.start()
    mem.write(DATA, b"abc")
    mem.write(SECOND_BASE, b"de")
    head = d.add(0, [(DATA, 3), (SECOND_BASE, 2)], [(DATA + 0x200, 5)], indirect_at=DATA + 0x800)
    dev.notify(0)
    assert d.used(0) == [(head, 5)] and mem.read(DATA + 0x200, 5) == b"edcba"
    t.close()


def test_event_idx_suppresses_interrupts_the_driver_did_not_ask_for():
    t, d, mem, irq, dev = make()
    d.start()
    desc, avail, used, size = d.rings[0]
    mem.write_int(avail + 4 + 2 * size, 2, 5)  # used_event: interrupt me once used idx passes 5
    for _ in range(3):
        d.add(0, [(DATA, 1)], [(DATA + 0x100, 1)])
        dev.notify(0)
    assert irq.triggers == 0 and len(d.used(0)) == 3
    # the device published avail_event = its next index, so the driver knows when to notify
    assert mem.read_int(used + 4 + 8 * size, 2) == 3
    for _ in range(3):
        d.add(0, [(DATA, 1)], [(DATA + 0x100, 1)])
        dev.notify(0)
    assert irq.triggers == 1  # crossing used_event = 5
    t.close()


def test_reset_drops_completions_taken_before_it():
    t, d, mem, irq, dev = make()
    d.start()
    d.add(0, [(DATA, 1)], [(DATA + 0x100, 1)])
    queue = dev.queues[0]
    chains = queue.drain(16)
    assert len(chains) == 1
    d.reg(v.MMIO_STATUS, 0)
    assert dev.resets == 2 and d.reg(v.MMIO_STATUS) == 0  # start() reset it once too
    queue.complete(chains[0], 1)
    assert mem.read_int(USED + 2, 2) == 0  # nothing landed in the old ring
    assert d.start() and dev.queues[0] is not queue  # a new activation, new handles
    queue.complete(chains[0], 1)
    assert mem.read_int(USED + 2, 2) == 0  # the old handle stays dead
    t.close()


def test_queue_layout_outside_ram_sets_needs_reset():
    t, d, mem, irq, dev = make()
    d.reg(v.MMIO_STATUS, v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER)
    d.reg(v.MMIO_QUEUE_SEL, 0)
    d.reg(v.MMIO_QUEUE_DESC_LOW, 0xFFFF_F000)
    d.reg(v.MMIO_QUEUE_READY, 1)
    assert d.reg(v.MMIO_QUEUE_READY) == 0
    assert d.reg(v.MMIO_STATUS) & v.STATUS_DEVICE_NEEDS_RESET
    d.reg(v.MMIO_STATUS, 0)  # a reset clears it
    assert d.reg(v.MMIO_STATUS) == 0
    t.close()


def test_queue_notify_written_to_the_register_reaches_the_eventfd():
    t, d, *_ = make()
    t.write(v.MMIO_QUEUE_NOTIFY, 4, 0)
    assert os.eventfd_read(t.notify_fds[0]) == 1
    t.write(v.MMIO_QUEUE_NOTIFY, 4, 7)  # no such queue: ignored
    t.close()


# -- hostile queues --------------------------------------------------------------------------------------------
def hostile(setup) -> tuple[MmioTransport, ModelMemory, RecordingInterrupt]:
    t, d, mem, irq, dev = make()
    d.start()
    setup(d, mem)
    t.notify(0)
    return t, d, mem, irq


def needs_reset(t: MmioTransport) -> bool:
    return bool(t.read(v.MMIO_STATUS, 4) & v.STATUS_DEVICE_NEEDS_RESET)


@pytest.mark.parametrize("name,setup", [
    ("loop", lambda d, m: (d.desc(0, 0, DATA, 4, v.DESC_F_NEXT, 1), d.desc(0, 1, DATA, 4, v.DESC_F_NEXT, 0),
                           d.publish(0, 0))),
    ("self loop", lambda d, m: (d.desc(0, 0, DATA, 4, v.DESC_F_NEXT, 0), d.publish(0, 0))),
    ("next out of range", lambda d, m: (d.desc(0, 0, DATA, 4, v.DESC_F_NEXT, 999), d.publish(0, 0))),
    ("head out of range", lambda d, m: d.publish(0, 16)),
    ("buffer outside RAM", lambda d, m: (d.desc(0, 0, 0x1000, 4, 0, 0), d.publish(0, 0))),
    ("buffer across the hole", lambda d, m: (d.desc(0, 0, HOLE_BASE - 8, 16, 0, 0), d.publish(0, 0))),
    ("buffer wrapping 2**64", lambda d, m: (d.desc(0, 0, 2**64 - 4, 8, 0, 0), d.publish(0, 0))),
    ("readable after writable", lambda d, m: (d.desc(0, 0, DATA, 4, v.DESC_F_WRITE | v.DESC_F_NEXT, 1),
                                              d.desc(0, 1, DATA, 4, 0, 0), d.publish(0, 0))),
    ("nested indirect", lambda d, m: (m.write(DATA, struct.pack("<QIHH", DATA, 16, v.DESC_F_INDIRECT, 0)),
                                      d.desc(0, 0, DATA, 16, v.DESC_F_INDIRECT, 0), d.publish(0, 0))),
    ("indirect loop", lambda d, m: (m.write(DATA, struct.pack("<QIHH", DATA, 4, v.DESC_F_NEXT, 0)),
                                    d.desc(0, 0, DATA, 16, v.DESC_F_INDIRECT, 0), d.publish(0, 0))),
    ("indirect length not a multiple of 16", lambda d, m: (d.desc(0, 0, DATA, 17, v.DESC_F_INDIRECT, 0),
                                                          d.publish(0, 0))),
    ("indirect table outside RAM", lambda d, m: (d.desc(0, 0, 0x10, 64, v.DESC_F_INDIRECT, 0), d.publish(0, 0))),
    ("avail index far ahead", lambda d, m: m.write_int(AVAIL + 2, 2, 1000)),
])
def test_a_hostile_queue_sets_needs_reset_and_stops_only_that_device(name, setup):
    t, d, mem, irq = hostile(setup)
    assert needs_reset(t), name
    assert d.used(0) == []
    assert d.reg(v.MMIO_INTERRUPT_STATUS) & v.INT_CONFIG_CHANGE and irq.triggers == 1
    # stopped: more notifications do nothing until the driver resets the device
    d.add(0, [(DATA, 1)], [(DATA + 8, 1)])
    assert t.device.queues[0].drain(16) == []
    assert d.start()  # a reset brings it back
    assert not needs_reset(t)
    t.close()


def test_indirect_without_the_feature_is_refused():
    t, d, mem, irq, dev = make()
    d.start(features=1 << v.F_VERSION_1)
    d.desc(0, 0, DATA, 16, v.DESC_F_INDIRECT, 0)
    d.publish(0, 0)
    t.notify(0)
    assert needs_reset(t)
    t.close()


descriptor = st.tuples(
    st.one_of(st.integers(0, 2**64 - 1), st.integers(RAM_BASE - 64, RAM_BASE + RAM_SIZE + 64),
              st.integers(SECOND_BASE - 64, SECOND_BASE + SECOND_SIZE + 64)),
    st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 4096)),
    st.integers(0, 7),  # NEXT | WRITE | INDIRECT in every combination
    st.one_of(st.integers(0, 2**16 - 1), st.integers(0, 20)),
)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.lists(descriptor, min_size=16, max_size=16),
       ring=st.lists(st.one_of(st.integers(0, 17), st.integers(0, 2**16 - 1)), min_size=16, max_size=16),
       avail_idx=st.one_of(st.integers(0, 16), st.integers(0, 2**16 - 1)),
       indirect_table=st.lists(descriptor, max_size=8), event_idx=st.booleans())
def test_random_descriptor_tables_never_escape_ram_raise_or_hang(table, ring, avail_idx, indirect_table, event_idx):
    """Whatever the driver writes, the device either gets well-formed chains inside RAM or stops with
    DEVICE_NEEDS_RESET; nothing else is raised, no guest memory outside RAM is touched, and it terminates."""
    features = TRANSPORT_FEATURES if event_idx else TRANSPORT_FEATURES & ~(1 << v.F_RING_EVENT_IDX)
    t, d, mem, irq, dev = make(size=16)
    assert d.start(features | EchoDevice.features)
    for i, (addr, length, flags, nxt) in enumerate(table):
        d.desc(0, i, addr, length, flags, nxt)
    for i, (addr, length, flags, nxt) in enumerate(indirect_table):  # some tables point here
        mem.write(DATA + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))
    for i, head in enumerate(ring):
        mem.write_int(AVAIL + 4 + 2 * i, 2, head)
    mem.write_int(AVAIL + 2, 2, avail_idx)
    before = mem.snapshot()
    started = time.monotonic()
    taken = 0
    for _ in range(20):  # a bounded number of notifications; each one must return
        chains = dev.queues[0].drain(1 << 30)
        taken += len(chains)
        for chain in chains:
            assert len(chain.readable) + len(chain.writable) <= 16 + 8
            # every buffer is a view of one RAM region (the walk checked its bounds before cutting it out)
            assert all(any(buffer.obj is data for _, data in mem.regions)
                       for buffer in chain.readable + chain.writable)
        if not chains:
            break
    assert time.monotonic() - started < 1.5
    assert taken <= 16  # never more chains than the driver can have made available
    assert all(mem.inside(gpa, length) for gpa, length in mem.accesses)
    # drain() writes nothing but avail_event in the used ring
    after = mem.snapshot()
    avail_event = USED + 4 + 8 * 16 - RAM_BASE
    masked = [b[:avail_event] + b[avail_event + 2 :] for b in (before[0], after[0])]
    assert masked[0] == masked[1]
    assert before[1] == after[1]
    if needs_reset(t):
        assert t.broken
    t.close()


@settings(max_examples=80, deadline=2000)
@given(st.lists(st.tuples(st.sampled_from([v.MMIO_QUEUE_SEL, v.MMIO_QUEUE_NUM, v.MMIO_QUEUE_READY,
                                           v.MMIO_QUEUE_DESC_LOW, v.MMIO_QUEUE_DESC_HIGH, v.MMIO_QUEUE_DRIVER_LOW,
                                           v.MMIO_QUEUE_DEVICE_LOW, v.MMIO_STATUS, v.MMIO_DRIVER_FEATURES,
                                           v.MMIO_DRIVER_FEATURES_SEL, v.MMIO_INTERRUPT_ACK, v.MMIO_QUEUE_NOTIFY,
                                           v.MMIO_CONFIG, 0x1FC, 0x0F0]),
                          st.integers(0, 2**32 - 1)), max_size=40))
def test_random_register_writes_never_raise(writes):
    t, d, mem, irq, dev = make()
    for offset, value in writes:
        t.write(offset, 4, value)
        t.read(offset, 4)
        t.notify(0)
        dev.notify(0)  # what a late worker callback does after any of these
    assert all(mem.inside(gpa, length) for gpa, length in mem.accesses)
    t.close()


@pytest.mark.parametrize("in_table,refused", [(13, False), (14, True)])
def test_the_queue_size_bounds_a_chain_across_its_direct_part_and_its_indirect_table(in_table, refused):
    """3 direct buffers, then a table: 3 + 13 = 16 descriptors is a chain of the queue size, 3 + 14 one too many
    (the descriptor pointing at the table does not count)."""
    t, d, mem, irq, dev = make()
    assert d.start()
    for i in range(3):
        d.desc(0, i, DATA + 0x100 * i, 4, v.DESC_F_NEXT, i + 1)
    d.desc(0, 3, DATA + 0x1000, 16 * in_table, v.DESC_F_INDIRECT, 0)
    for i in range(in_table):
        last = i == in_table - 1
        mem.write(DATA + 0x1000 + 16 * i, struct.pack("<QIHH", DATA + 0x400, 1, v.DESC_F_WRITE if last else
                                                       v.DESC_F_NEXT, 0 if last else i + 1))
    d.publish(0, 0)
    chains = dev.queues[0].drain(1)
    assert needs_reset(t) == refused
    assert [(len(c.readable), len(c.writable)) for c in chains] == ([] if refused else [(15, 1)])
    if refused:
        assert "more than 16 descriptors" in t.broken
    t.close()


def test_virtqueue_pop_on_a_queue_that_is_not_ready_returns_nothing():
    queue = Virtqueue(ModelMemory(), 8)
    assert queue.pop() is None
    queue.size = 3
    with pytest.raises(VirtqueueError):
        queue.validate()


def test_a_chain_longer_than_the_queue_is_refused_even_through_an_indirect_table():
    """A chain is at most the queue size (2.7.5.3.1): an indirect table may not make one notification cost
    more (32768 descriptors per head, 256 heads: 8 M descriptors walked under the transport lock)."""
    t, d, mem, irq, dev = make()
    assert d.start()
    longest = t.queues[0].max_size
    d.add(0, [(DATA + 0x8000, 1)] * longest, [], indirect_at=DATA)
    t.notify(0)
    assert not needs_reset(t) and len(d.used(0)) == 1
    d.add(0, [(DATA + 0x8000, 1)] * (longest + 1), [], indirect_at=DATA)
    t.notify(0)
    assert needs_reset(t) and len(d.used(0)) == 1
    t.close()


def test_one_notification_serves_at_most_a_ring_s_worth_then_yields_to_the_worker():
    """A driver that keeps adding chains (another vCPU) must not hold the worker in one notify forever: after one
    ring's worth the device yields (kicks itself again) so the worker sees its other fds and stop."""

    class Busy(EchoDevice):
        driver: Driver
        served = 0

        def serve(self, index: int, chain: Chain) -> int:
            self.served += 1
            if self.served < 1000:
                self.driver.add(0, [(DATA, 1)], [(DATA + 0x100, 1)])  # the guest refills as fast as we serve
            return super().serve(index, chain)

    dev = Busy()
    dev.batch = 4
    t, d, mem, irq, _ = make(dev)
    dev.driver = d
    assert d.start()
    os.eventfd_read(t.notify_fds[0])  # the kick DRIVER_OK gives every queue
    for _ in range(dev.batch):  # full batches: a short one ends the notification (the driver kicks for more)
        d.add(0, [(DATA, 1)], [(DATA + 0x100, 1)])
    t.notify(0)
    assert dev.served == 16  # one ring's worth (16 entries)
    assert os.eventfd_read(t.notify_fds[0]) == 1  # and the queue kicked again for the worker's next round
    t.notify(0)
    assert dev.served == 32
    t.close()


# -- the straight-table fast path of the walk -------------------------------------------------------------------
def _take_through_indirect(table: list[tuple[int, int, int, int]], straight: bool, before: int | None = None):
    """Queue 0 of a fresh ring whose one chain is an indirect table (after a buffer with flags `before`, if given):
    what `take` makes of it, with or without the fast path for straight tables: ("error", message) or ("chain",
    readable, writable) as (region, offset, length)."""
    memory = ModelMemory()
    desc, avail, used, at = RAM_BASE, RAM_BASE + 0x1000, RAM_BASE + 0x2000, RAM_BASE + 0x3000
    for i, entry in enumerate(table):
        memory.write(at + 16 * i, struct.pack("<QIHH", *entry))
    if before is not None:  # spec-wise the driver must not, but the walk allows it: a buffer, then the table
        memory.write(desc + 16, struct.pack("<QIHH", RAM_BASE + 0x9000, 4, before | v.DESC_F_NEXT, 0))
        memory.write_int(avail + 4, 2, 1)
    memory.write(desc, struct.pack("<QIHH", at, 16 * len(table), v.DESC_F_INDIRECT, 0))
    queue = Virtqueue(memory, 16)
    queue.size, queue.desc, queue.avail, queue.used, queue.indirect = 16, desc, avail, used, True
    queue.validate()
    queue.ready = True
    memory.write_int(avail + 2, 2, 1)  # head 0 published
    if not straight:
        queue._straight = lambda *args: None
    try:
        with mock.patch.object(virtqueue, "STRAIGHT_MIN", 1):  # tried for every table, however short
            (chain,) = queue.take(4)
    except VirtqueueError as err:
        return "error", str(err)
    ffi = cffi.FFI()

    def where(buffer: memoryview) -> tuple[int, int, int]:
        (region,) = [i for i, (_, data) in enumerate(memory.regions) if buffer.obj is data]
        start = int(ffi.cast("uintptr_t", ffi.from_buffer(buffer.obj)))
        return region, int(ffi.cast("uintptr_t", ffi.from_buffer(buffer))) - start, len(buffer)

    return ("chain", [where(b) for b in chain.readable], [where(b) for b in chain.writable], chain.readable_len,
            chain.writable_len)


def _linux_table(readable: int, writable: int, addr: int = RAM_BASE + 0x8000) -> list[tuple[int, int, int, int]]:
    count = readable + writable
    return [(addr + 0x100 * i, 16 + i, (v.DESC_F_WRITE if i >= readable else 0) | (v.DESC_F_NEXT if i < count - 1
                                                                                      else 0), i + 1)
            for i in range(count)]


def test_a_linux_indirect_table_takes_the_fast_path_with_the_walks_views():
    memory = ModelMemory()
    queue = Virtqueue(memory, 16)
    table = b"".join(struct.pack("<QIHH", *entry) for entry in _linux_table(2, 3))
    base, ram = memory.region_at(RAM_BASE)
    chain = queue._straight(7, memoryview(table), 5, base, ram)
    assert chain is not None and chain.head == 7
    assert [len(b) for b in chain.readable] == [16, 17] and [len(b) for b in chain.writable] == [18, 19, 20]
    assert _take_through_indirect(_linux_table(2, 3), True) == _take_through_indirect(_linux_table(2, 3), False)


def test_a_long_indirect_table_is_tried_whole_and_a_short_one_walked():
    """A 1 MiB request (header, 128 data buffers, status) goes through _straight; a 4 KiB one (3 descriptors) is
    walked one descriptor at a time, where that costs less."""
    memory = ModelMemory()
    desc, avail, used = RAM_BASE, RAM_BASE + 0x1000, RAM_BASE + 0x2000
    queue = Virtqueue(memory, 256)
    queue.desc, queue.avail, queue.used, queue.indirect = desc, avail, used, True
    queue.validate()
    queue.ready = True
    for head, (table, at) in enumerate([(_linux_table(129, 1), RAM_BASE + 0x4000),
                                        (_linux_table(2, 1), RAM_BASE + 0x5000)]):
        memory.write(at, b"".join(struct.pack("<QIHH", *entry) for entry in table))
        memory.write(desc + 16 * head, struct.pack("<QIHH", at, 16 * len(table), v.DESC_F_INDIRECT, 0))
        memory.write_int(avail + 4 + 2 * head, 2, head)
    memory.write_int(avail + 2, 2, 2)
    tried = []
    straight = queue._straight
    queue._straight = lambda *args: tried.append(args[2]) or straight(*args)
    chains = queue.take(4)
    assert tried == [130]
    assert [(len(c.readable), len(c.writable)) for c in chains] == [(129, 1), (2, 1)]
    assert [len(b) for b in chains[0].readable[:3]] == [16, 17, 18]


edge_addr = st.sampled_from([RAM_BASE - 1, RAM_BASE, RAM_BASE + RAM_SIZE - 16, RAM_BASE + RAM_SIZE,
                             SECOND_BASE, SECOND_BASE + SECOND_SIZE - 8, HOLE_BASE - 8, 0, 2**64 - 8])


@settings(max_examples=300, deadline=2000)
@given(readable=st.integers(0, 8), writable=st.integers(0, 8), before=st.sampled_from([None, 0, v.DESC_F_WRITE]),
       data=st.data())
def test_the_fast_path_for_straight_tables_agrees_with_the_walk(readable, writable, before, data):
    """Near-Linux tables with random damage (flags, next, addresses, lengths): with the fast path the chain or the
    error is exactly what the descriptor-by-descriptor walk makes of the same table."""
    table = _linux_table(readable, writable) or [(RAM_BASE, 1, 0, 0)]
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(table) - 1))
        addr, length, flags, nxt = table[i]
        field = data.draw(st.sampled_from(["addr", "length", "flags", "next"]))
        if field == "addr":
            addr = data.draw(st.one_of(edge_addr, st.integers(0, 2**64 - 1)))
        elif field == "length":
            length = data.draw(st.sampled_from([0, 8, 16, 2**32 - 1, RAM_SIZE]))
        elif field == "flags":
            flags = data.draw(st.integers(0, 15))
        else:
            nxt = data.draw(st.integers(0, 2**16 - 1))
        table[i] = (addr, length, flags, nxt)
    assert _take_through_indirect(table, True, before) == _take_through_indirect(table, False, before)
