"""Register mirrors on this host's /dev/kvm. The UART's: the device manager maps a read-only memory slot over an MMIO
UART's page, keeps the UART's register values in it, deletes the slot while reads have side effects and when the
VM's devices close. virtio-mmio's: a guest's virtio-blk driver (the hostile guest) works through the page with no
register read exiting. (The arm64 lane's console and virtio tests boot Linux through both.)"""

from __future__ import annotations

import mmap

import re

import pytest
from pyvmm_bindings import constants as c

from pyvmm.devices import serial
from pyvmm.devices.manager import DeviceManager, SlotWindow
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vm import Vm
from tests.hostile_guest import BREAK_LOOP, DONE, LOOP, NEEDS_RESET, NO_FEATURES_OK, S_OK, WRITE, run_hostile

UART = 0x9000_0000


@pytest.fixture
def devices():
    kvm = Kvm.open()
    vm = Vm(kvm)
    if not vm.check_extension(c.KVM_CAP_READONLY_MEM):
        vm.close()
        kvm.close()
        pytest.skip("this KVM has no read-only memory slots")
    vm.add_ram(0, 1 << 20)
    manager = DeviceManager(vm, SlotWindow(0xD000_0000, 0x200, 4, 16), irq_line_arg=lambda irq: irq)
    yield manager
    manager.close()
    vm.close()
    kvm.close()


def _mirrored_uart(devices: DeviceManager, base: int, size: int) -> tuple[serial.Serial16550, bool]:
    uart = serial.Serial16550(lambda data: None, lambda level: None)
    placement = devices.add(uart, uart.identity, base=base, size=size)
    return uart, devices.mirror_reads(uart, placement)


def test_the_page_holds_the_registers_while_reads_are_free_and_is_unmapped_otherwise(devices):
    uart, mirrored = _mirrored_uart(devices, UART, mmap.PAGESIZE)
    assert mirrored
    page = devices.mirror[1].page
    assert page.shown and page.slot == 1  # slot 0 is RAM
    assert page.buffer[serial.LSR] == serial.LSR_THRE | serial.LSR_TEMT
    uart.write(serial.SCR, 1, 0x5A)
    assert page.buffer[serial.SCR] == 0x5A
    uart.feed(b"x")  # RBR would pop it: reads must exit
    assert not page.shown
    assert uart.read(serial.RBR_THR, 1) == ord("x")
    assert page.shown and page.changes == 3
    devices.close()
    assert not page.shown and devices.mirror is None


def test_a_device_smaller_than_a_host_page_gets_no_mirror(devices):
    uart, mirrored = _mirrored_uart(devices, UART, 8)
    assert not mirrored and devices.mirror is None
    uart.feed(b"x")  # and works as before
    assert uart.read(serial.LSR, 1) & serial.LSR_DR


def test_a_guest_virtio_driver_reads_every_register_from_the_page_through_resets(tmp_path):
    """The hostile guest's phases that read back FEATURES_OK, a completed request's InterruptStatus and
    DEVICE_NEEDS_RESET, and reset the device in a loop: each answered as without the page, and not one read exits."""
    phases = (NO_FEATURES_OK, WRITE, LOOP, BREAK_LOOP)
    run = run_hostile("x86_64", tmp_path, memory_mib=64, phases=phases, timeout=120, extra_args=("--debug",))
    if "read-only register page" in run.stderr or "read-only page" not in run.stderr:
        pytest.skip(f"no read-only register page on this KVM: {run.stderr[-500:]}")
    assert run.exit_status == 0 and sorted(run.reports) == sorted(phases), (run.reports, run.stderr[-3000:])
    assert (run.reports[WRITE].result, run.reports[WRITE].status) == (DONE, S_OK)
    assert run.reports[LOOP].result == NEEDS_RESET
    assert re.search(r"register reads of blk0 served from a read-only page at 0x", run.stderr), run.stderr
    assert re.search(r"virtio-mmio \(blk0\): 0 register reads exited", run.stderr), run.stderr
