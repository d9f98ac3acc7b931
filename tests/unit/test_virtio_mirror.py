"""The virtio-mmio register mirror: whatever the driver and the device do, the read-only page holds exactly what an
exiting read of each register would return, InterruptStatus is on it before the interrupt is signalled, and the
device manager maps one page per host page of slots in use and takes it down at close (pure logic on host memory;
tests/x86_64/test_register_mirror.py runs a guest driver through the page on /dev/kvm, the lane's virtio tests
Linux)."""

from __future__ import annotations

import mmap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyvmm_bindings.constants import KVM_MEM_READONLY

from pyvmm.arch.arm64 import machine as arm64_machine
from pyvmm.devices.manager import DeviceManager, SlotWindow
from pyvmm.devices.virtio import constants as v
from pyvmm.devices.virtio.config import RngConfig
from pyvmm.devices.virtio.transport import MmioTransport
from tests.unit.fakes import RecordingVm
from tests.unit.test_virtio_contract import RecordingDevice
from tests.unit.test_virtio_queue import Driver, ModelMemory

REGISTERS = [offset for offset in range(0, v.MMIO_CONFIG, 4) if offset != v.MMIO_QUEUE_NOTIFY]
VALUES = st.one_of(st.integers(0, 3), st.integers(0, 0xFFFF_FFFF), st.sampled_from([0x1000, 0x8000, 0xFF]))
STEPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(REGISTERS), VALUES),
    st.tuples(st.just("config write"), st.integers(v.MMIO_CONFIG, v.MMIO_SIZE - 1), st.integers(0, 255)),
    st.sampled_from([("start",), ("used",), ("config changed",), ("fail",), ("ack",)]),
), max_size=40)


class CheckedInterrupt:
    """Records triggers; each one asserts that the page already shows the status bit it announces."""

    resample_fd = None

    def __init__(self) -> None:
        self.page: memoryview | None = None
        self.triggers = 0

    def trigger(self) -> None:
        self.triggers += 1
        if self.page is not None:
            assert self.page[v.MMIO_INTERRUPT_STATUS // 4] != 0, "interrupt signalled before the page shows it"

    def lower(self) -> None:
        pass


def mirrored() -> tuple[MmioTransport, Driver, memoryview, CheckedInterrupt]:
    memory = ModelMemory()
    interrupt = CheckedInterrupt()
    transport = MmioTransport(RecordingDevice(), memory, interrupt)
    page = memoryview(bytearray(v.MMIO_SIZE))
    transport.mirror_reads(page)
    interrupt.page = page.cast("I")
    return transport, Driver(transport, memory), page, interrupt


def assert_page_matches_reads(transport: MmioTransport, page: memoryview) -> None:
    for offset in range(0, v.MMIO_SIZE, 4):
        shown = int.from_bytes(page[offset : offset + 4], "little")
        assert shown == transport.read(offset, 4), f"register {offset:#x}"
    for offset in range(v.MMIO_CONFIG, v.MMIO_SIZE):
        assert page[offset] == transport.read(offset, 1), f"config byte {offset:#x}"


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_the_page_shows_what_every_read_would_return_after_any_driver_and_device_steps(steps):
    transport, driver, page, _ = mirrored()
    assert_page_matches_reads(transport, page)
    for step in steps:
        kind = step[0]
        if kind == "write":
            transport.write(step[1], 4, step[2])
        elif kind == "config write":
            transport.write(step[1], 1, step[2])
        elif kind == "start":
            driver.start()
        elif kind == "used" and transport.device.activations:
            transport.device.activations[-1][1].signal_used()
        elif kind == "config changed":
            transport.config_changed()
        elif kind == "fail":
            transport.fail("a test's broken request")
        elif kind == "ack":
            transport.write(v.MMIO_INTERRUPT_ACK, 4, int.from_bytes(page[0x60:0x64], "little"))
        assert_page_matches_reads(transport, page)
    transport.mirror_reads(None)
    transport.close()


def test_interrupt_status_is_on_the_page_before_the_interrupt_and_gone_after_the_ack():
    transport, driver, page, interrupt = mirrored()
    assert driver.start()
    transport.device.activations[-1][1].signal_used()  # CheckedInterrupt asserts the order
    assert interrupt.triggers == 1 and page[v.MMIO_INTERRUPT_STATUS] == v.INT_USED_BUFFER
    transport.write(v.MMIO_INTERRUPT_ACK, 4, v.INT_USED_BUFFER)
    assert page[v.MMIO_INTERRUPT_STATUS] == 0
    transport.fail("broken")  # DEVICE_NEEDS_RESET and the config-change bit, both before the interrupt
    assert page[v.MMIO_STATUS] & v.STATUS_DEVICE_NEEDS_RESET and page[v.MMIO_INTERRUPT_STATUS] == v.INT_CONFIG_CHANGE
    assert interrupt.triggers == 2
    transport.close()


def test_a_detached_transport_no_longer_writes_to_the_page():
    transport, driver, page, interrupt = mirrored()
    transport.mirror_reads(None)
    interrupt.page = None
    before = bytes(page)
    assert driver.start()
    transport.device.activations[-1][1].signal_used()
    assert bytes(page) == before and transport.isr == v.INT_USED_BUFFER
    transport.close()


def test_the_config_generation_moves_on_both_sides_of_a_published_config_change():
    transport, _, page, _ = mirrored()
    words = page.cast("I")
    before = words[v.MMIO_CONFIG_GENERATION // 4]
    transport.config_changed()
    assert words[v.MMIO_CONFIG_GENERATION // 4] == before + 2 == transport.read(v.MMIO_CONFIG_GENERATION, 4)
    transport.close()


# -- the device manager's pages ---------------------------------------------------------------------------------
def test_one_read_only_page_covers_the_slots_in_use_and_goes_away_at_close():
    vm = RecordingVm(readonly=True)
    window = arm64_machine.VIRTIO_SLOTS
    devices = DeviceManager(vm, window, irq_line_arg=lambda irq: irq)
    try:
        devices.add_virtio_devices([RngConfig(), RngConfig(), RngConfig()], lambda data: None)
        (page, slots), = devices.virtio_pages
        assert page.guest_phys == window.base and page.shown and len(slots) == 3
        assert ("set_memory_region", page.slot, window.base, mmap.PAGESIZE, KVM_MEM_READONLY) in vm.calls
        for n, slot in enumerate(devices.virtio):
            registers = page.buffer[n * window.stride : n * window.stride + v.MMIO_SIZE]
            assert int.from_bytes(registers[:4], "little") == v.MMIO_MAGIC
            assert int.from_bytes(registers[v.MMIO_DEVICE_ID : v.MMIO_DEVICE_ID + 4], "little") == v.ID_RNG
        with pytest.raises(ValueError, match="once"):
            devices.mirror_virtio_registers()
    finally:
        devices.close()
        vm.close()
    assert ("set_memory_region", page.slot, window.base, 0, KVM_MEM_READONLY) in vm.calls  # the slot deleted
    assert devices.virtio_pages == [] and page.buffer.closed


@pytest.mark.parametrize("window, readonly", [
    (SlotWindow(0xD000_0000, 0x200, 2, 16), True),  # a host page would reach past the two slots
    (arm64_machine.VIRTIO_SLOTS, False),  # KVM without read-only slots
])
def test_without_a_page_that_fits_every_register_read_exits_as_before(window, readonly):
    vm = RecordingVm(readonly=readonly)
    devices = DeviceManager(vm, window, irq_line_arg=lambda irq: irq)
    try:
        devices.add_virtio_devices([RngConfig()], lambda data: None)
        assert devices.virtio_pages == []
        transport = devices.virtio[0].transport
        assert transport.read(v.MMIO_MAGIC_VALUE, 4) == v.MMIO_MAGIC and transport.read_exits == 1
    finally:
        devices.close()
        vm.close()


class WritableConfig(RecordingDevice):
    """A device whose config space the driver may write (none of pyvmm's does yet; the contract allows it)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = bytearray(8)

    def config_space(self) -> bytes:
        return bytes(self.config)

    def write_config(self, offset: int, data: bytes) -> None:
        self.config[offset : offset + len(data)] = data[: len(self.config) - offset]


def test_a_config_write_is_on_the_page_before_the_vcpu_resumes():
    transport = MmioTransport(WritableConfig(), ModelMemory(), CheckedInterrupt())
    page = memoryview(bytearray(v.MMIO_SIZE))
    transport.mirror_reads(page)
    transport.write(v.MMIO_STATUS, 4, v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER)
    transport.write(v.MMIO_CONFIG + 2, 2, 0xBEEF)
    assert bytes(page[v.MMIO_CONFIG : v.MMIO_CONFIG + 8]) == b"\0\0\xef\xbe\0\0\0\0"
    assert_page_matches_reads(transport, page)
    transport.close()
