"""The device manager without /dev/kvm: placements from the arch layout, wiring through Vm methods only, slot order,
what each arch renders from the placements, and teardown."""

from __future__ import annotations

import threading

import pytest

from pyvmm.arch.arm64 import gic
from pyvmm.arch.arm64 import machine as arm64_machine
from pyvmm.arch.x86_64 import layout as x86_layout
from pyvmm.arch.x86_64 import machine as x86_machine
from pyvmm.devices import serial, testdev
from pyvmm.devices.bus import BusConflictError
from pyvmm.devices.manager import DeviceManager, SlotWindow
from pyvmm.devices.placement import BUS_PIO
from pyvmm.devices.virtio.config import ConsoleDeviceConfig, RngConfig
from pyvmm.devices.virtio.console import Console
from pyvmm.devices.virtio.constants import MMIO_QUEUE_NOTIFY, MMIO_SIZE
from pyvmm.devices.virtio.rng import Rng
from pyvmm.errors import UsageError
from tests.unit.fakes import RecordingVm


@pytest.fixture
def vm():
    machine = RecordingVm()
    yield machine
    machine.close()


def test_virtio_devices_take_the_slots_in_order_and_are_wired_through_vm_methods(vm):
    devices = DeviceManager(vm, x86_machine.VIRTIO_SLOTS, irq_line_arg=lambda irq: irq)
    try:
        devices.add_virtio_devices([ConsoleDeviceConfig(), RngConfig()], lambda data: None)  # rng goes first
        rng, console = devices.virtio
        assert isinstance(rng.device, Rng) and isinstance(console.device, Console)
        assert [(p.base, p.size, p.irq) for p in devices.placements] == [
            (x86_layout.VIRTIO_MMIO, MMIO_SIZE, x86_layout.VIRTIO_MMIO_FIRST_GSI),
            (x86_layout.VIRTIO_MMIO + x86_layout.VIRTIO_MMIO_STRIDE, MMIO_SIZE, x86_layout.VIRTIO_MMIO_FIRST_GSI + 1)]
        notify = [call for call in vm.calls if call[0] == "ioeventfd"]
        assert notify == [("ioeventfd", x86_layout.VIRTIO_MMIO + MMIO_QUEUE_NOTIFY, 4, 0)] + [
            ("ioeventfd", x86_layout.VIRTIO_MMIO + x86_layout.VIRTIO_MMIO_STRIDE + MMIO_QUEUE_NOTIFY, 4, q)
            for q in range(len(console.transport.notify_fds))]
        assert devices.mmio.find(x86_layout.VIRTIO_MMIO + 0x10).device is rng.transport
        assert devices.console_input() == console.device.feed
        assert x86_machine.kernel_params(devices.placements) == [
            "virtio_mmio.device=0x200@0xd0000000:16", "virtio_mmio.device=0x200@0xd0000200:17"]
        # Without KVM_CAP_IRQFD_RESAMPLE the interrupt is KVM_IRQ_LINE on the slot's GSI, a level that ACK lowers.
        rng.interrupt.trigger()
        assert vm.calls[-1] == ("irq_line", x86_layout.VIRTIO_MMIO_FIRST_GSI, 1)
        rng.interrupt.lower()
        assert vm.calls[-1] == ("irq_line", x86_layout.VIRTIO_MMIO_FIRST_GSI, 0)
    finally:
        devices.close()
    assert not devices.virtio and not devices.placements and devices.mmio.ranges == []
    assert not any(thread.name.startswith("virtio-") for thread in threading.enumerate())


def test_arm64_interrupt_lines_are_encoded_by_the_arch(vm):
    devices = DeviceManager(vm, arm64_machine.VIRTIO_SLOTS, irq_line_arg=gic.spi_irq_line)
    uart = serial.Serial16550(lambda data: None, devices.irq_setter(1))
    uart.write(1, 1, 0x02)  # THRE interrupt on
    assert vm.calls == [("irq_line", gic.spi_irq_line(1), 1)]


def test_fixed_devices_are_placed_where_the_layout_says_and_conflicts_are_refused(vm):
    devices = DeviceManager(vm, x86_machine.VIRTIO_SLOTS, irq_line_arg=lambda irq: irq)
    test_device = testdev.TestDevice(lambda status: None)
    placement = devices.add(test_device, test_device.identity, base=0x500, size=testdev.SIZE, bus=BUS_PIO)
    assert (placement.bus, placement.base, placement.size, placement.irq) == (BUS_PIO, 0x500, 0x20, None)
    assert devices.pio.find(0x51F).device is test_device and devices.mmio.find(0x500) is None
    with pytest.raises(BusConflictError):
        devices.add(test_device, test_device.identity, base=0x510, size=0x10, bus=BUS_PIO)
    assert devices.placements == [placement]


def test_more_devices_than_slots_is_a_usage_error(vm):
    devices = DeviceManager(vm, SlotWindow(0xD000_0000, 0x200, 1, 16), irq_line_arg=lambda irq: irq)
    with pytest.raises(UsageError, match="2 virtio devices asked for: this machine has 1 virtio-mmio slots"):
        devices.add_virtio_devices([RngConfig(), RngConfig()], lambda data: None)
    assert not devices.virtio and not vm.calls


def test_a_window_with_slots_smaller_than_a_transport_is_refused(vm):
    with pytest.raises(ValueError, match="stride"):
        DeviceManager(vm, SlotWindow(0xD000_0000, 0x100, 4, 16), irq_line_arg=lambda irq: irq)


def test_arm64_virtio_interrupts_are_edge_irqfds_without_resample_assigned_and_deassigned_through_the_vm():
    vm = RecordingVm(irqfd=True)
    devices = DeviceManager(vm, arm64_machine.VIRTIO_SLOTS, irq_line_arg=gic.spi_irq_line)
    first_spi = arm64_machine.VIRTIO_SLOTS.first_irq
    try:
        devices.add_virtio_devices([RngConfig()], lambda data: None)
        assert [call for call in vm.calls if call[0] == "irqfd"] == [("irqfd", first_spi, False, False)]
        assert devices.placements[0].edge  # so the device tree says EDGE_RISING
        assert devices.virtio[0].interrupt.resample_fd is None  # nothing wakes the worker on EOI
    finally:
        devices.close()
        vm.close()
    assert vm.calls[-1] == ("irqfd", first_spi, True, False)


def test_x86_virtio_interrupts_are_level_irqfds_with_a_resamplefd():
    vm = RecordingVm(irqfd=True)
    devices = DeviceManager(vm, x86_machine.VIRTIO_SLOTS, irq_line_arg=lambda irq: irq)
    try:
        devices.add_virtio_devices([RngConfig()], lambda data: None)
        gsi = x86_layout.VIRTIO_MMIO_FIRST_GSI
        assert [call for call in vm.calls if call[0] == "irqfd"] == [("irqfd", gsi, False, True)]
        assert not devices.placements[0].edge
    finally:
        devices.close()
        vm.close()


def test_without_irqfd_an_arm64_virtio_interrupt_is_a_kvm_irq_line_pulse_and_ack_lowers_nothing(vm):
    devices = DeviceManager(vm, arm64_machine.VIRTIO_SLOTS, irq_line_arg=gic.spi_irq_line)
    try:
        devices.add_virtio_devices([RngConfig()], lambda data: None)
        line = gic.spi_irq_line(arm64_machine.VIRTIO_SLOTS.first_irq)
        interrupt = devices.virtio[0].interrupt
        interrupt.trigger()
        assert vm.calls[-2:] == [("irq_line", line, 1), ("irq_line", line, 0)]
        before = len(vm.calls)
        interrupt.lower()
        assert len(vm.calls) == before
    finally:
        devices.close()
