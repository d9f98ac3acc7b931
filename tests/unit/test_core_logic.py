"""Pure logic of the core: buses, guest memory bounds, the UART model, sizes, the arm64 Image parser and placement."""

from __future__ import annotations

import gzip
import mmap
import struct

import pytest

from pyvmm.arch.arm64 import boot as arm_boot
from pyvmm.arch.arm64 import image as arm_image
from pyvmm.spec import parse_size
from pyvmm.devices.bus import Bus, BusConflictError
from pyvmm.devices.serial import Serial16550
from pyvmm.errors import GuestMemoryError, ImageError, UsageError
from pyvmm.kvm.memory import GuestMemory, MemoryRegion


class Recorder:
    def __init__(self, name="dev"):
        self.name = name
        self.writes = []

    def read(self, offset, size):
        return 0x1234 + offset

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def test_bus_dispatches_by_offset_and_rejects_overlaps():
    bus = Bus("test")
    a, b = Recorder("a"), Recorder("b")
    bus.register(0x1000, 0x100, a)
    bus.register(0x2000, 0x10, b)
    assert bus.write(0x1004, 4, 9)
    assert a.writes == [(4, 4, 9)]
    assert bus.read(0x2008, 2) == 0x1234 + 8
    assert bus.read(0x3000, 1) is None
    assert not bus.write(0x20FF, 4, 1)
    assert bus.read(0x200E, 4) is None  # straddles the end of b
    with pytest.raises(BusConflictError, match="overlaps a"):
        bus.register(0x10F0, 0x20, Recorder("c"))
    with pytest.raises(BusConflictError):
        bus.register(0x5000, 0, Recorder("d"))


def test_guest_memory_is_bounds_checked():
    memory = GuestMemory()
    memory.add(MemoryRegion(0, 0x1000, 0x2000, mmap.mmap(-1, 0x2000)))
    memory.write(0x1000, b"abc")
    assert memory.read(0x1000, 3) == b"abc"
    memory.write_int(0x2FF8, 8, 0x1122334455667788)
    assert memory.read_int(0x2FF8, 8) == 0x1122334455667788
    for gpa, length in ((0xFFF, 2), (0x2FFF, 2), (0x3000, 1), (-1, 1), (0x1000, -1), (0x1000, 1 << 40)):
        with pytest.raises(GuestMemoryError):
            memory.view(gpa, length)
    assert not memory.contains(0x3000)
    base, whole = memory.region_at(0x2FF8)  # the whole region, for callers that check their own bounds
    assert base == 0x1000 and len(whole) == 0x2000 and bytes(whole[:3]) == b"abc"
    whole.release()
    for gpa in (0xFFF, 0x3001, -1):
        with pytest.raises(GuestMemoryError):
            memory.region_at(gpa)
    with pytest.raises(ValueError):
        memory.add(MemoryRegion(1, 0x2000, 0x1000, mmap.mmap(-1, 0x1000)))
    memory.close()


def test_uart_transmits_receives_and_raises_its_interrupt():
    out, irq = [], []
    uart = Serial16550(out.append, irq.append)
    uart.write(0, 1, ord("h"))
    assert out == [b"h"]
    assert uart.read(5, 1) & 0x60 == 0x60  # THRE and TEMT: always ready
    uart.write(1, 1, 0x01)  # enable the receive interrupt
    uart.feed(b"ok")
    assert irq[-1] == 1
    assert uart.read(2, 1) & 0x0F == 0x04  # IIR: receive data available
    assert uart.read(0, 1) == ord("o") and uart.read(0, 1) == ord("k")
    assert irq[-1] == 0
    assert uart.read(5, 1) & 1 == 0
    uart.write(1, 1, 0x02)  # THRE interrupt fires at once: the transmitter is empty
    assert irq[-1] == 1
    assert uart.read(2, 1) & 0x0F == 0x02
    assert irq[-1] == 0  # reading IIR acknowledged it
    uart.write(3, 1, 0x80)  # DLAB: divisor latch, not the transmitter
    uart.write(0, 1, 0x01)
    assert out == [b"h"]


@pytest.mark.parametrize("text, value", [("256M", 256 << 20), ("1G", 1 << 30), ("512", 512 << 20),
                                         ("64MiB", 64 << 20), ("4096K", 4 << 20)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1M", "1.5G", "lots", "12Q"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        parse_size(text)


def arm64_header(text_offset=0, image_size=4096, flags=2, magic=b"ARM\x64") -> bytes:
    return struct.pack("<IIQQQQQQ4s4s", 0x14000010, 0, text_offset, image_size, flags, 0, 0, 0, magic, b"\0" * 4)


def test_arm64_image_header_is_parsed_and_checked():
    data = arm64_header(0x80000, 8192) + bytes(4096 - 64)
    image = arm_image.parse(data, "k")
    assert (image.text_offset, image.image_size) == (0x80000, 8192)
    assert arm_image.parse(gzip.compress(data), "k.gz").data == data
    with pytest.raises(ImageError, match="big-endian"):
        arm_image.parse(arm64_header(flags=3) + bytes(4032), "be")
    with pytest.raises(ImageError, match="says"):
        arm_image.parse(arm64_header(image_size=100) + bytes(4032), "small")
    with pytest.raises(ImageError, match="corrupt"):
        arm_image.parse(b"\x1f\x8b\x08\x00garbage", "bad.gz")
    # Absurd header values are a corrupt Image (65), not a VM short of memory (64).
    with pytest.raises(ImageError, match="text_offset 0x200000 is not below 2 MiB: a corrupt Image header"):
        arm_image.parse(arm64_header(text_offset=2 << 20) + bytes(4032), "far")
    with pytest.raises(ImageError, match="image_size 0x7ffffffffffff000 is over 512 MiB: a corrupt Image header"):
        arm_image.parse(arm64_header(image_size=0x7FFF_FFFF_FFFF_F000) + bytes(4032), "huge")


def test_arm64_raw_binary_loads_at_ram_base_plus_0x80000():
    flat = bytes([0x00, 0x00, 0x00, 0x14]) * 64  # `b .` and friends: code, not text
    image = arm_image.parse(flat, "selftest.flat")
    assert (image.raw, image.text_offset, image.image_size, image.data) == (True, 0x80000, len(flat), flat)
    assert arm_boot.place(image, 4096, 0x4000_0000, 256 << 20).kernel == 0x4008_0000
    # A header whose magic is wrong is no Image, so it is a raw binary too; a real Image is not raw.
    assert arm_image.parse(arm64_header(magic=b"ARM\x65") + bytes(100), "odd").raw
    assert not arm_image.parse(arm64_header() + bytes(4032), "Image").raw


@pytest.mark.parametrize("data, what", [
    (b"\x7fELF\x02\x01\x01" + bytes(11) + b"\xb7\x00" + bytes(64), "arm64 ELF"),
    (bytes(0x202) + b"HdrS" + bytes(64), "bzImage"),
    (b"MZ" + bytes(200), "PE/EFI"),
    (b"", "empty"),
    (gzip.compress(bytes(range(256)) * 64, mtime=0)[:30], "corrupt"),
    (b"#!/bin/sh\necho hi\n", "text file"),
    (b"KERNEL_VERSION=6\nERRATA_7b6b46311a85=y\n", "text file"),
    (b"070701" + bytes(200), "cpio"),
], ids=lambda value: value if isinstance(value, str) else f"{len(value)}B")  # stable ids for pytest-xdist
def test_arm64_foreign_files_are_refused_not_run_raw(data, what):
    with pytest.raises(ImageError, match=what):
        arm_image.parse(data, "f")


def test_truncated_efi_stub_image_is_detected():
    # An "MZ" Image with a PE section table whose section data ends beyond the file.
    head = bytearray(arm64_header(0, 1 << 20))
    head[0:2] = b"MZ"
    head[0x3C:0x40] = (0x40).to_bytes(4, "little")
    pe = bytearray(b"PE\0\0" + bytes(20))
    pe[6:8] = (1).to_bytes(2, "little")  # one section
    pe[20:22] = (0).to_bytes(2, "little")  # no optional header
    section = bytearray(40)
    section[16:20] = (0x10000).to_bytes(4, "little")  # SizeOfRawData
    section[20:24] = (0x1000).to_bytes(4, "little")  # PointerToRawData
    data = bytes(head) + bytes(pe) + bytes(section)
    with pytest.raises(ImageError, match="truncated"):
        arm_image.parse(data + bytes(0x2000), "cut")
    assert arm_image.parse(data + bytes(0x11000 - len(data)), "whole").image_size == 1 << 20


def test_arm64_placement_refuses_what_does_not_fit():
    image = arm_image.ArmImage(b"", 0, 30 << 20)
    placed = arm_boot.place(image, 8 << 20, 0x4000_0000, 128 << 20)
    assert placed.kernel == 0x4000_0000
    assert placed.dtb == 0x4000_0000 + (126 << 20)
    assert placed.kernel_end <= placed.initrd < placed.dtb
    with pytest.raises(UsageError, match="more memory"):
        arm_boot.place(image, None, 0x4000_0000, 16 << 20)
    with pytest.raises(ImageError, match="initrd"):
        arm_boot.place(image, 100 << 20, 0x4000_0000, 128 << 20)


def test_arm64_bootargs_add_a_console_only_for_linux_without_nodefaults():
    from pyvmm.arch.arm64.machine import guest_bootargs

    assert guest_bootargs("root=/dev/vda", exact=False) == "root=/dev/vda console=ttyS0 earlycon"
    assert guest_bootargs("console=hvc0", exact=False) == "console=hvc0"
    assert guest_bootargs("setup smp=2 mem=256", exact=True) == "setup smp=2 mem=256"
    assert guest_bootargs("", exact=True) == ""
