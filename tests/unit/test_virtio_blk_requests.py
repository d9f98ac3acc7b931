"""The virtio-blk request path: Linux's descriptor layout (the fast path) and every other legal split give the same
answers; hostile chains never touch the image or guest memory outside the request's device-writable buffers."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest

from pyvmm.devices.virtio import blk as b
from pyvmm.devices.virtio import constants as v
from pyvmm.devices.virtio import virtqueue
from pyvmm.devices.virtio.config import DiskConfig
from pyvmm.kvm.memory import GuestMemory, MemoryRegion, allocate
from tests.unit.test_virtio_devices import BUF, HDR, STATUS, submit
from tests.unit.test_virtio_queue import DATA, RAM_BASE, RAM_SIZE, USED, make

SECTOR_1 = bytes(range(256)) * 2  # what sector 1 of the image holds


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB = 32 sectors
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def started(image, memory=None, **config):
    """A blk device on `image` behind a started transport and driver; closed at the end, whatever happened."""
    device = b.Block(DiskConfig(image, **config))
    t, d, mem, irq, _ = make(device, memory=memory)
    try:
        assert d.start()
        yield device, t, d, mem, irq
    finally:
        device.close()
        t.close()


@contextlib.contextmanager
def untouched(image):
    """The block asserts nothing reached the image (checked once the device inside it is closed)."""
    before = digest(image)
    yield
    assert digest(image) == before


def header(mem, kind, sector, at=HDR):
    mem.write(at, struct.pack("<IIQ", kind, 0, sector))


@pytest.mark.parametrize("layout", ["linux", "split-header", "status-in-data", "zero-length-tail"])
def test_every_legal_split_of_a_read_gives_the_same_answer(image, layout):
    with started(image) as (device, t, d, mem, _):
        header(mem, b.T_IN, 1)
        if layout == "linux":
            status, written = submit(d, mem, [(HDR, 16)], [(BUF, 512), (STATUS, 1)])
            status_at = STATUS
        elif layout == "split-header":
            status, written = submit(d, mem, [(HDR, 8), (HDR + 8, 8)], [(BUF, 256), (BUF + 256, 256), (STATUS, 1)])
            status_at = STATUS
        elif layout == "status-in-data":  # one writable buffer: 512 data bytes then the status byte
            status, written = submit(d, mem, [(HDR, 16)], [(BUF, 513)])
            status_at = BUF + 512
        else:
            status, written = submit(d, mem, [(HDR, 16)], [(BUF, 512), (STATUS, 1), (STATUS + 1, 0)])
            status_at = STATUS
        assert mem.read_int(status_at, 1) == b.S_OK and written == 513
        assert mem.read(BUF, 512) == SECTOR_1


def test_a_write_split_any_way_lands_where_the_header_says(image):
    with started(image) as (device, t, d, mem, _):
        mem.write(BUF, b"\xab" * 1024)
        header(mem, b.T_OUT, 2)
        assert submit(d, mem, [(HDR, 16), (BUF, 1024)], [(STATUS, 1)]) == (b.S_OK, 1)
        joined = BUF + 0x2000  # header and data in one readable buffer
        header(mem, b.T_OUT, 4, at=joined)
        mem.write(joined + 16, b"\xcd" * 512)
        assert submit(d, mem, [(joined, 16 + 512)], [(STATUS, 1)]) == (b.S_OK, 1)
        data = image.read_bytes()
        assert data[1024:2048] == b"\xab" * 1024 and data[2048:2560] == b"\xcd" * 512
        assert data[:1024] == (bytes(range(256)) * 4) and data[2560:] == (bytes(range(256)) * 64)[2560:]


@pytest.mark.parametrize("kind", [b.T_IN, b.T_OUT])
@pytest.mark.parametrize("length", [1, 511, 513, 4097])
def test_a_length_that_is_not_whole_sectors_is_an_io_error_and_changes_nothing(image, kind, length):
    with untouched(image), started(image) as (device, t, d, mem, _):
        mem.write(BUF, b"\x77" * length)
        header(mem, kind, 0)
        data = ([(BUF, length)], []) if kind == b.T_OUT else ([], [(BUF, length)])
        assert submit(d, mem, [(HDR, 16)] + data[0], data[1] + [(STATUS, 1)])[0] == b.S_IOERR
        assert mem.read(BUF, length) == b"\x77" * length  # a refused read writes no data


@pytest.mark.parametrize("kind", [b.T_IN, b.T_OUT])
@pytest.mark.parametrize("sector", [31, 32, 2**54, 2**64 - 1])
def test_requests_reaching_past_the_end_change_nothing(image, kind, sector):
    with untouched(image), started(image) as (device, t, d, mem, _):
        header(mem, kind, sector)
        data = ([(BUF, 1024)], []) if kind == b.T_OUT else ([], [(BUF, 1024)])
        assert submit(d, mem, [(HDR, 16)] + data[0], data[1] + [(STATUS, 1)])[0] == b.S_IOERR


def test_buffers_in_the_wrong_direction_are_neither_read_into_nor_written_from(image):
    with untouched(image), started(image) as (device, t, d, mem, _):
        mem.write(BUF, b"\x55" * 512)
        header(mem, b.T_IN, 1)  # a read whose data buffer is device-readable: nothing may be written into it
        assert submit(d, mem, [(HDR, 16), (BUF, 512)], [(STATUS, 1)]) == (b.S_OK, 1)
        assert mem.read(BUF, 512) == b"\x55" * 512
        header(mem, b.T_OUT, 1)  # a write whose data buffer is device-writable: nothing reaches the image
        assert submit(d, mem, [(HDR, 16)], [(BUF, 512), (STATUS, 1)]) == (b.S_OK, 1)
        assert mem.read(BUF, 512) == b"\x55" * 512


def test_a_data_buffer_outside_ram_stops_the_device_before_any_io(image):
    with untouched(image), started(image) as (device, t, d, mem, _):
        header(mem, b.T_OUT, 0)
        d.add(0, [(HDR, 16), (BUF, 512), (RAM_BASE + RAM_SIZE - 256, 512)], [(STATUS, 1)])  # the last one crosses
        mem.write_int(STATUS, 1, 0xEE)
        t.notify(0)
        assert t.read(v.MMIO_STATUS, 4) & v.STATUS_DEVICE_NEEDS_RESET
        assert mem.read_int(STATUS, 1) == 0xEE and d.used(0) == []


def test_a_write_to_a_read_only_disk_is_an_io_error(image):
    with untouched(image), started(image, read_only=True) as (device, t, d, mem, _):
        header(mem, b.T_OUT, 0)
        assert submit(d, mem, [(HDR, 16), (BUF, 512)], [(STATUS, 1)])[0] == b.S_IOERR


@pytest.mark.parametrize("count", [2, b.POOL_MIN_BATCH + 2])
def test_a_batch_completes_every_request_with_one_interrupt(image, count):
    """Fewer than POOL_MIN_BATCH requests are served on the worker thread, more by the pool: same results."""
    with started(image) as (device, t, d, mem, irq):
        heads = []
        for i in range(count):
            hdr, buf, status = HDR + 32 * i, BUF + 512 * i, STATUS + 0x40 + i
            header(mem, b.T_IN, i, at=hdr)
            mem.write_int(status, 1, 0xEE)
            heads.append(d.add(0, [(hdr, 16)], [(buf, 512), (status, 1)]))
        triggers = irq.triggers
        device.notify(0)
        assert [head for head, _ in d.used(0)] == heads and all(n == 513 for _, n in d.used(0))
        assert irq.triggers == triggers + 1
        for i in range(count):
            assert mem.read_int(STATUS + 0x40 + i, 1) == b.S_OK
            assert mem.read(BUF + 512 * i, 512) == (bytes(range(256)) * 2)


def test_with_event_idx_the_device_asks_for_the_next_kick_after_what_it_took(image):
    with started(image) as (device, t, d, mem, _):
        assert d.device_features() >> v.F_RING_EVENT_IDX & 1
        header(mem, b.T_IN, 0)
        for _ in range(3):
            submit(d, mem, [(HDR, 16)], [(BUF, 512), (STATUS, 1)])
        size = d.rings[0][3]
        assert mem.read_int(USED + 4 + 8 * size, 2) == 3  # avail_event: the index the driver publishes next


def test_the_request_path_on_real_guest_memory(image):
    """GuestMemory (an anonymous mmap), as in a VM: the rings are cast views of it."""
    memory = GuestMemory()
    memory.add(MemoryRegion(0, RAM_BASE, RAM_SIZE, allocate(RAM_SIZE)))
    with started(image, memory=memory) as (device, t, d, mem, _):
        header(mem, b.T_IN, 1)
        assert submit(d, mem, [(HDR, 16)], [(BUF, 512), (STATUS, 1)]) == (b.S_OK, 513)
        assert mem.read(BUF, 512) == SECTOR_1
        mem.write(BUF, b"\x42" * 512)
        header(mem, b.T_OUT, 3)
        assert submit(d, mem, [(HDR, 16), (BUF, 512)], [(STATUS, 1)]) == (b.S_OK, 1)
        assert image.read_bytes()[1536:2048] == b"\x42" * 512
    memory.close()


@pytest.mark.parametrize("kind", [b.T_IN, b.T_OUT])
def test_a_long_request_through_an_indirect_table_reads_and_writes_every_buffer(image, kind):
    """20 scattered data buffers in one indirect table, as Linux writes a large request: the walk takes the table
    whole (Virtqueue._straight, which also gives the chain's lengths) and the data lands buffer by buffer."""
    count, table = 20, DATA + 0x8000
    assert count + 2 >= virtqueue.STRAIGHT_MIN
    buffers = [(BUF + 0x400 * i, 512) for i in range(count)]
    payload = bytes(range(256)) * 2 * count if kind == b.T_IN else bytes(i % 251 for i in range(512 * count))
    with started(image) as (device, t, d, mem, _):
        for i, (addr, length) in enumerate(buffers):
            mem.write(addr, b"\xee" * length if kind == b.T_IN else payload[512 * i : 512 * (i + 1)])
        header(mem, kind, 0)
        mem.write_int(STATUS, 1, 0xEE)
        readable, writable = ([(HDR, 16)], buffers + [(STATUS, 1)]) if kind == b.T_IN else \
            ([(HDR, 16)] + buffers, [(STATUS, 1)])
        head = d.add(0, readable, writable, indirect_at=table)
        device.notify(0)
        assert d.used(0)[-1] == (head, 512 * count + 1 if kind == b.T_IN else 1)
        assert mem.read_int(STATUS, 1) == b.S_OK
        got = b"".join(mem.read(addr, length) for addr, length in buffers)
        assert got == payload and image.read_bytes()[: 512 * count] == payload
        header(mem, kind, 32 - count + 1)  # one sector past the end: refused as a whole
        head = d.add(0, readable, writable, indirect_at=table + 0x1000)
        device.notify(0)
        assert d.used(0)[-1] == (head, 1) and mem.read_int(STATUS, 1) == b.S_IOERR
