"""KVM's coalesced ring (pyvmm.kvm.coalesced) and the UART draining it (pyvmm.devices.serial, .coalesced), on a fake
ring page in a bytearray that the test fills as KVM's coalesced_mmio_write does."""

from __future__ import annotations

import struct
import time

import pytest

from pyvmm.devices import serial
from pyvmm.devices.coalesced import CoalescedZone
from pyvmm.kvm.coalesced import ENTRY, HEADER, CoalescedRing, ring_entries

PAGE = 4096
BASE = 0x3F8
SIZE = ring_entries(PAGE)  # 170 entries, one always free


class FakeKvm:
    """The producer side, as virt/kvm/coalesced_mmio.c writes it."""

    def __init__(self) -> None:
        self.page = bytearray(PAGE)

    def indices(self) -> tuple[int, int]:
        return HEADER.unpack_from(self.page, 0)

    def set_indices(self, first: int, last: int) -> None:
        HEADER.pack_into(self.page, 0, first, last)

    def write(self, addr: int, data: bytes, pio: int = 1) -> bool:
        """Queue one write; False when the ring is full (KVM then exits to userspace instead)."""
        first, last = self.indices()
        if last >= SIZE or (last + 1) % SIZE == first:
            return False
        ENTRY.pack_into(self.page, HEADER.size + last * ENTRY.size, addr, len(data), pio, data.ljust(8, b"\0"))
        struct.pack_into("<I", self.page, 4, (last + 1) % SIZE)
        return True


class Uart:
    """A UART whose THR (port BASE) writes KVM may queue, with what it output and its IRQ line."""

    def __init__(self) -> None:
        self.kvm = FakeKvm()
        self.ring = CoalescedRing(self.kvm.page, PAGE)
        self.out: list[bytes] = []
        self.irq: list[int] = []
        self.device = serial.Serial16550(self.out.append, self.irq.append)
        self.zone = CoalescedZone(self.ring, self.device, BASE, 1, pio=True)  # not started: no flusher thread

    def guest_write(self, offset: int, value: int) -> None:
        """What a guest's `outb` does: queued if it falls in the zone and the ring has room, else an exit."""
        if offset == serial.RBR_THR and self.kvm.write(BASE, bytes((value,))):
            return
        self.device.write(offset, 1, value)

    def output(self) -> bytes:
        return b"".join(self.out)


def test_an_empty_ring_gives_nothing():
    kvm = FakeKvm()
    assert CoalescedRing(kvm.page, PAGE).take() == []


def test_entries_come_oldest_first_and_are_freed():
    kvm = FakeKvm()
    ring = CoalescedRing(kvm.page, PAGE)
    kvm.write(0x1000, b"\x41", pio=0)
    kvm.write(0x3F8, b"\x42")
    kvm.write(0x2000, b"\x01\x02\x03\x04", pio=0)
    assert ring.take() == [(0x1000, 1, 0, 0x41), (0x3F8, 1, 1, 0x42), (0x2000, 4, 0, 0x04030201)]
    assert kvm.indices() == (3, 3)
    assert ring.take() == []


def test_the_ring_wraps_around():
    kvm = FakeKvm()
    ring = CoalescedRing(kvm.page, PAGE)
    kvm.set_indices(SIZE - 2, SIZE - 2)
    for value in range(5):
        assert kvm.write(BASE, bytes((value,)))
    assert [entry[3] for entry in ring.take()] == list(range(5))
    assert kvm.indices() == (3, 3)


def test_a_full_ring_is_drained_whole_in_one_take():
    kvm = FakeKvm()
    ring = CoalescedRing(kvm.page, PAGE)
    written = 0
    while kvm.write(BASE, bytes((written & 0xFF,))):
        written += 1
    assert written == SIZE - 1
    assert [entry[3] for entry in ring.take()] == [n & 0xFF for n in range(written)]


@pytest.mark.parametrize("first, last", [(0, SIZE), (0, 0xFFFFFFFF), (SIZE, 3), (0xFFFFFFFF, 0xFFFFFFFF - 1)])
def test_bad_indices_never_read_past_the_page(first, last):
    kvm = FakeKvm()
    kvm.set_indices(first, last)
    ring = CoalescedRing(kvm.page, PAGE)
    assert ring.take() == []
    if last < SIZE:  # a bad `first` is reset to where KVM writes next; a bad `last` is KVM's and left alone
        assert kvm.indices() == (last, last)


def test_a_bad_length_is_dropped():
    kvm = FakeKvm()
    ring = CoalescedRing(kvm.page, PAGE)
    kvm.write(BASE, b"a")
    kvm.write(BASE, b"b")
    struct.pack_into("<I", kvm.page, HEADER.size + 8, 0)  # entry 0: len 0
    ENTRY.pack_into(kvm.page, HEADER.size + ENTRY.size, BASE, 4096, 1, b"b".ljust(8, b"\0"))  # entry 1: len 4096
    kvm.write(BASE, b"c")
    assert ring.take() == [(BASE, 1, 1, ord("c"))]
    assert ring.dropped == 2


def test_a_closed_ring_reads_empty():
    kvm = FakeKvm()
    ring = CoalescedRing(kvm.page, PAGE)
    kvm.write(BASE, b"a")
    ring.close()
    assert ring.take() == []


def test_queued_bytes_come_out_before_a_read_is_answered():
    uart = Uart()
    for byte in b"hello":
        uart.guest_write(serial.RBR_THR, byte)
    assert uart.output() == b""  # still in KVM's ring
    assert uart.device.read(serial.LSR, 1) & serial.LSR_THRE
    assert uart.output() == b"hello"
    assert uart.device.queued_writes == 5


def test_queued_bytes_come_out_before_an_exiting_write():
    uart = Uart()
    uart.guest_write(serial.RBR_THR, ord("a"))
    uart.guest_write(serial.SCR, 0x55)  # any register but THR exits
    assert uart.out == [b"a"]
    assert uart.device.read(serial.SCR, 1) == 0x55


def test_a_divisor_written_with_dlab_set_stays_a_divisor():
    uart = Uart()
    uart.guest_write(serial.RBR_THR, ord("a"))
    uart.guest_write(serial.LCR, serial.LCR_DLAB | 0x03)  # exits: drains "a" with DLAB still clear
    uart.guest_write(serial.RBR_THR, 0x01)  # DLL, queued like a THR byte
    uart.guest_write(serial.IER, 0x00)  # DLM (exits)
    uart.guest_write(serial.LCR, 0x03)  # exits: the queued DLL write is applied with DLAB set
    uart.guest_write(serial.RBR_THR, ord("b"))
    assert uart.device.read(serial.LSR, 1) & serial.LSR_THRE
    assert uart.output() == b"ab"
    uart.guest_write(serial.LCR, serial.LCR_DLAB | 0x03)
    assert (uart.device.read(serial.RBR_THR, 1), uart.device.read(serial.IER, 1)) == (0x01, 0x00)


def test_the_divisor_latch_and_bytes_interleave_in_ring_order_before_a_read():
    """DLAB changes need an exit each, so every queued write is applied in the state it was written in."""
    uart = Uart()
    uart.guest_write(serial.LCR, serial.LCR_DLAB)
    uart.guest_write(serial.RBR_THR, 0x30)  # DLL
    uart.guest_write(serial.RBR_THR, 0x31)  # DLL again: the last one wins
    uart.guest_write(serial.LCR, 0x03)
    for byte in b"xy":
        uart.guest_write(serial.RBR_THR, byte)
    uart.zone.close()  # the VM's end: what is left comes out
    assert uart.output() == b"xy"
    assert uart.device._dll == 0x31


def test_a_full_ring_falls_back_to_exits_without_reordering():
    uart = Uart()
    text = bytes(range(32, 127)) * 4  # 380 bytes: more than the ring holds
    for byte in text:
        uart.guest_write(serial.RBR_THR, byte)
    uart.zone.close()
    assert uart.output() == text
    assert uart.device.queued_writes == len(text) - 2  # the 170th byte and the 340th (ring full each time) exited


def test_thre_interrupts_follow_queued_writes():
    uart = Uart()
    uart.guest_write(serial.IER, serial.IER_THRI)  # enabling THRI raises it at once: the transmitter is empty
    assert uart.irq == [1]
    assert uart.device.read(serial.IIR_FCR, 1) & 0x0F == serial.IIR_THRI  # acknowledged
    assert uart.irq == [1, 0]
    uart.guest_write(serial.RBR_THR, ord("z"))
    assert uart.device.read(serial.IIR_FCR, 1) & 0x0F == serial.IIR_THRI  # the queued write raised THRE again
    assert uart.irq == [1, 0, 1, 0]
    assert uart.output() == b"z"


def test_loopback_bytes_queued_reach_the_receiver():
    uart = Uart()
    uart.guest_write(serial.MCR, serial.MCR_LOOP)
    uart.guest_write(serial.RBR_THR, 0x42)
    assert uart.device.read(serial.LSR, 1) & serial.LSR_DR
    assert uart.device.read(serial.RBR_THR, 1) == 0x42
    assert uart.output() == b""


def test_entries_outside_the_zone_are_dropped():
    uart = Uart()
    uart.kvm.write(BASE + 1, b"\x0f")  # KVM only queues the zone; anything else is not the UART's
    uart.kvm.write(BASE, b"q", pio=0)  # an MMIO write at the port's number
    uart.guest_write(serial.RBR_THR, ord("k"))
    assert uart.device.read(serial.IER, 1) == 0
    assert uart.output() == b"k"


def test_without_a_queue_flush_is_a_no_op():
    out: list[bytes] = []
    device = serial.Serial16550(out.append, lambda level: None)
    device.flush()
    device.write(serial.RBR_THR, 1, ord("a"))
    assert out == [b"a"] and device.queued_writes == 0


def test_the_flusher_outputs_what_a_guest_wrote_before_idling():
    """No exit follows the guest's last bytes (it idles in WFI/HLT inside KVM): the flusher thread drains them."""
    uart = Uart()
    uart.zone.start()
    try:
        for byte in b"idle\n":
            uart.kvm.write(BASE, bytes((byte,)))
        deadline = time.monotonic() + 10
        while uart.output() != b"idle\n" and time.monotonic() < deadline:
            time.sleep(0.005)
        assert uart.output() == b"idle\n"
    finally:
        uart.zone.close()
