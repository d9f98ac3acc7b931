"""The arm64 device tree pyvmm generates is accepted by dtc and renders the device manager's placements."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from pyvmm.arch.arm64 import devicetree, gic, layout
from pyvmm.arch.arm64.gic import Gic
from pyvmm.arch.arm64.machine import VIRTIO_SLOTS
from pyvmm.devices import serial, testdev
from pyvmm.devices.manager import DeviceManager
from pyvmm.devices.virtio.config import ConsoleDeviceConfig, RngConfig
from tests.conftest import ROOT
from tests.unit.fakes import RecordingVm

DATA = ROOT / "tests" / "unit" / "data"


def build(version: int = 3, cpus: int = 2, initrd=(0x4800_0000, 0x4900_0000),
          bootargs: str = "console=ttyS0 rdinit=/init", its: bool = False, pmu: bool = False) -> bytes:
    """The arm64 machine's tree with the devices placed as its builder places them (UART, test device, 2 virtio)."""
    vm = RecordingVm()
    devices = DeviceManager(vm, VIRTIO_SLOTS, irq_line_arg=gic.spi_irq_line)
    try:
        uart = serial.Serial16550(lambda data: None, devices.irq_setter(layout.UART_SPI))
        console = devices.add(uart, uart.identity, base=layout.UART, size=layout.UART_SIZE, irq=layout.UART_SPI)
        test_device = testdev.TestDevice(lambda status: None)
        devices.add(test_device, test_device.identity, base=layout.TESTDEV, size=testdev.SIZE)
        devices.add_virtio_devices([ConsoleDeviceConfig(), RngConfig()], lambda data: None)
        return devicetree.build(
            mpidrs=[0x8000_0000 | i for i in range(cpus)], memory_base=layout.RAM, memory_size=256 << 20,
            gic=Gic(version, -1, cpus, its_fd=-1 if its else None), bootargs=bootargs, initrd=initrd,
            devices=devices.placements, stdout=console, pmu=pmu,
        )
    finally:
        devices.close()
        vm.close()


@pytest.fixture(scope="module")
def dtc() -> str:
    path = shutil.which("dtc")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("dtc is missing: tests/run installs device-tree-compiler")
        pytest.skip("dtc (device-tree-compiler) is not installed")
    return path


def decompile(dtc: str, blob: bytes, tmp_path) -> str:
    path = tmp_path / "machine.dtb"
    path.write_bytes(blob)
    result = subprocess.run([dtc, "-I", "dtb", "-O", "dts", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    return result.stdout


@pytest.mark.parametrize("version", [3, 2])
def test_dtc_decompiles_without_warnings(dtc, tmp_path, version):
    dts = decompile(dtc, build(version), tmp_path)
    assert 'compatible = "arm,gic-v3"' in dts if version == 3 else 'compatible = "arm,cortex-a15-gic"' in dts
    for needle in ("cpu@0 {", "cpu@1 {", 'enable-method = "psci"', 'compatible = "arm,psci-0.2"',
                   'compatible = "arm,armv8-timer"', 'compatible = "ns16550a"', "serial@9000000",
                   'stdout-path = "/serial@9000000"', 'bootargs = "console=ttyS0 rdinit=/init"',
                   "linux,initrd-start = <0x00 0x48000000>", "rng-seed", 'compatible = "pyvmm,testdev"',
                   "virtio_mmio@a000000", "dma-coherent", "memory@40000000", "reg = <0x00 0x40000000 0x00 0x10000000>"):
        assert needle in dts, needle


@pytest.mark.parametrize("version", [3, 2])
def test_the_tree_is_the_one_the_hand_written_nodes_gave(dtc, tmp_path, version):
    """Recorded from the tree of commit 950699a (UART and test device nodes written by hand), random seeds masked.
    One deliberate change: the test device's reg is its register file (0x20), the size both machines now map."""
    dts = re.sub(r"(rng-seed|kaslr-seed) = <[^>]*>", r"\1 = <seed>", decompile(dtc, build(version), tmp_path))
    assert dts == (DATA / f"arm64-devicetree-v{version}.dts").read_text()


def test_an_empty_command_line_is_an_empty_bootargs_string():
    # A raw binary run without --params (kvm-unit-tests' timer, psci): its argv is empty, the property still there.
    import fdt

    assert bytes(fdt.parse_dtb(build(bootargs="")).get_property("bootargs", "/chosen").data) == b"\0"


def test_its_and_pmu_nodes(dtc, tmp_path):
    """--irqchip gicv3-its: an `msi-controller` child of the GIC at the layout's ITS frames; --pmu: the PMUv3 node
    with its overflow PPI 7 (INTID 23), as QEMU's virt and kvmtool describe them."""
    dts = decompile(dtc, build(3, its=True, pmu=True), tmp_path)
    for needle in ("its@8080000 {", 'compatible = "arm,gic-v3-its"', "msi-controller;", "#msi-cells = <0x01>",
                   "reg = <0x00 0x8080000 0x00 0x20000>", "ranges;", 'compatible = "arm,armv8-pmuv3"',
                   "interrupts = <0x01 0x07 0x04>"):
        assert needle in dts, needle
    plain = decompile(dtc, build(3), tmp_path)
    assert "its@" not in plain and "pmu" not in plain and "ranges" not in plain
    # GICv2 PPIs carry the CPU mask (2 vCPUs: 0x03) in their flags, the PMU's as the timer's.
    assert "interrupts = <0x01 0x07 0x304>" in decompile(dtc, build(2, pmu=True), tmp_path)
