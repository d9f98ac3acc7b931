"""The arm64 device tree pyvmm generates is accepted by dtc and describes the machine's devices."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from pyvmm.arch.arm64 import devicetree, layout
from pyvmm.arch.arm64.gic import Gic


def build(version: int = 3, cpus: int = 2, initrd=(0x4800_0000, 0x4900_0000),
          bootargs: str = "console=ttyS0 rdinit=/init") -> bytes:
    return devicetree.build(
        mpidrs=[0x8000_0000 | i for i in range(cpus)], memory_base=layout.RAM, memory_size=256 << 20,
        gic=Gic(version, -1, cpus), bootargs=bootargs, initrd=initrd,
        devices=[devicetree.MmioDeviceNode("virtio_mmio", layout.VIRTIO_MMIO, layout.VIRTIO_MMIO_STRIDE,
                                           ["virtio,mmio"], spi=layout.VIRTIO_MMIO_FIRST_SPI,
                                           extra={"dma-coherent": True})],
    )


@pytest.fixture(scope="module")
def dtc() -> str:
    path = shutil.which("dtc")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("dtc is missing: tests/run installs device-tree-compiler")
        pytest.skip("dtc (device-tree-compiler) is not installed")
    return path


@pytest.mark.parametrize("version", [3, 2])
def test_dtc_decompiles_without_warnings(dtc, tmp_path, version):
    blob = tmp_path / "machine.dtb"
    blob.write_bytes(build(version))
    result = subprocess.run([dtc, "-I", "dtb", "-O", "dts", str(blob)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    dts = result.stdout
    assert 'compatible = "arm,gic-v3"' in dts if version == 3 else 'compatible = "arm,cortex-a15-gic"' in dts
    for needle in ("cpu@0 {", "cpu@1 {", 'enable-method = "psci"', 'compatible = "arm,psci-0.2"',
                   'compatible = "arm,armv8-timer"', 'compatible = "ns16550a"', "serial@9000000",
                   'stdout-path = "/serial@9000000"', 'bootargs = "console=ttyS0 rdinit=/init"',
                   "linux,initrd-start = <0x00 0x48000000>", "rng-seed", 'compatible = "pyvmm,testdev"',
                   "virtio_mmio@a000000", "dma-coherent", "memory@40000000", "reg = <0x00 0x40000000 0x00 0x10000000>"):
        assert needle in dts, needle



def test_an_empty_command_line_is_an_empty_bootargs_string():
    # A raw binary run without --params (kvm-unit-tests' timer, psci): its argv is empty, the property still there.
    import fdt

    assert bytes(fdt.parse_dtb(build(bootargs="")).get_property("bootargs", "/chosen").data) == b"\0"
