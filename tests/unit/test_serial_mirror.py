"""The UART's register mirror: shown only while every register read is free of side effects, showing exactly what
an exiting read would return, and hidden before anything the guest could observe changes (pure logic; the lane's
console test boots Linux with the read-only page)."""

from __future__ import annotations

import errno
import logging
import mmap

from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.arch.arm64 import layout as arm64_layout
from pyvmm.arch.arm64 import machine as arm64_machine
from pyvmm.devices import serial
from pyvmm.devices.manager import DeviceManager
from tests.unit.fakes import RecordingVm


class RecordingMirror:
    def __init__(self, events: list) -> None:
        self.events = events
        self.image: bytes | None = None

    def show(self, image: bytes) -> None:
        self.image = image
        self.events.append(("show", image))

    def hide(self) -> None:
        self.image = None
        self.events.append(("hide",))


def _uart() -> tuple[serial.Serial16550, RecordingMirror, list, bytearray]:
    events: list = []
    out = bytearray()
    uart = serial.Serial16550(out.extend, lambda level: events.append(("irq", level)))
    mirror = RecordingMirror(events)
    uart.mirror_reads(mirror)
    return uart, mirror, events, out


def _state(uart: serial.Serial16550) -> tuple:
    return (tuple(uart._rx), uart._thre_pending, uart._irq_level, uart._ier, uart._lcr, uart._mcr, uart._fcr)


def test_a_uart_after_reset_is_mirrored_with_an_empty_transmitter_and_no_interrupt():
    uart, mirror, _, _ = _uart()
    assert mirror.image is not None
    assert mirror.image[serial.LSR] == serial.LSR_THRE | serial.LSR_TEMT
    assert mirror.image[serial.IIR_FCR] == serial.IIR_NO_INT
    assert mirror.image[serial.MSR] == serial.MSR_DCD_DSR_CTS


def test_a_linux_console_write_changes_the_mirror_only_at_its_ier_writes():
    uart, mirror, events, out = _uart()
    uart.write(serial.IER, 1, serial.IER_RDI)  # the tty is open: receive interrupts on, still mirrored
    assert mirror.image is not None and mirror.image[serial.IER] == serial.IER_RDI
    events.clear()
    uart.write(serial.IER, 1, 0)  # serial8250_console_write: IER off, then LSR + THR per byte
    for byte in b"Booting Linux\n":
        assert mirror.image[serial.LSR] & serial.LSR_THRE  # what the guest reads instead of exiting
        uart.write(serial.RBR_THR, 1, byte)
    uart.write(serial.IER, 1, serial.IER_RDI)
    assert bytes(out) == b"Booting Linux\n"
    assert [e[0] for e in events] == ["show", "show"]  # the two IER values, no hide: every read stayed free


def test_input_hides_the_mirror_before_raising_the_interrupt_and_reading_it_all_shows_it_again():
    uart, mirror, events, _ = _uart()
    uart.write(serial.IER, 1, serial.IER_RDI)
    events.clear()
    uart.feed(b"ab")
    assert events == [("hide",), ("irq", 1)]  # a vCPU taking the interrupt reads LSR/IIR/RBR through exits
    assert uart.read(serial.LSR, 1) & serial.LSR_DR
    assert uart.read(serial.RBR_THR, 1) == ord("a")
    assert mirror.image is None
    assert uart.read(serial.RBR_THR, 1) == ord("b")
    assert mirror.image is not None and not mirror.image[serial.LSR] & serial.LSR_DR
    assert events[-1] == ("irq", 0) and events[-2][0] == "show"


def test_thre_interrupts_dlab_and_loopback_each_hide_the_mirror():
    for offset, value in ((serial.IER, serial.IER_THRI), (serial.LCR, serial.LCR_DLAB | 3),
                          (serial.MCR, serial.MCR_LOOP)):
        uart, mirror, events, _ = _uart()
        uart.write(offset, 1, value)
        assert mirror.image is None, (offset, value)
        uart.write(offset, 1, 0 if offset != serial.LCR else 3)
        assert mirror.image is not None, (offset, value)


def test_detaching_hides_the_mirror():
    uart, mirror, events, _ = _uart()
    uart.mirror_reads(None)
    assert events[-1] == ("hide",)
    uart.feed(b"x")  # no mirror any more: nothing to hide
    assert events[-1] == ("hide",)


operations = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 7), st.integers(0, 255)),
    st.tuples(st.just("read"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("feed"), st.integers(1, 3), st.just(0)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_whenever_the_mirror_shows_an_image_reading_any_register_returns_it_and_changes_nothing(ops):
    uart, mirror, _, _ = _uart()
    for kind, a, b in ops:
        if kind == "write":
            uart.write(a, 1, b)
        elif kind == "read":
            uart.read(a, 1)
        else:
            uart.feed(bytes(range(a)))
        with uart._lock:
            expected = uart.register_image()
        assert mirror.image == expected  # kept current after every kind of access
        if mirror.image is not None:
            before = _state(uart)
            assert bytes(uart.read(offset, 1) for offset in range(serial.REGISTERS)) == mirror.image
            assert _state(uart) == before  # the reads the guest makes without exiting would have changed nothing
            uart.write(serial.RBR_THR, 1, 0x41)  # a THR write (maybe queued, unseen) leaves the image valid
            assert uart.register_image() == mirror.image


def test_a_page_kvm_refuses_at_once_leaves_every_read_exiting_and_says_so(caplog):
    class RefusingVm(RecordingVm):
        def set_memory_region(self, slot, guest_phys, size, host_address, flags=0):
            raise OSError(errno.ENOMEM, "Cannot allocate memory")

    vm = RefusingVm(readonly=True)
    devices = DeviceManager(vm, arm64_machine.VIRTIO_SLOTS, irq_line_arg=lambda irq: irq)
    uart = serial.Serial16550(lambda data: None, lambda level: None)
    placement = devices.add(uart, uart.identity, base=arm64_layout.UART, size=mmap.PAGESIZE)
    try:
        with caplog.at_level(logging.DEBUG):
            assert devices.mirror_reads(uart, placement) is False
        assert "the register mirror failed" in caplog.text and "served from a read-only page" not in caplog.text
        assert uart.read(serial.LSR, 1) & serial.LSR_THRE and uart.read_exits == 1  # answered by an exit
    finally:
        devices.close()
        vm.close()
