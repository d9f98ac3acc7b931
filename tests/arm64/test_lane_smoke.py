"""Smoke test of the lane itself (not of pyvmm): the emulated host has working arm64 KVM and the L2 artifacts."""
from __future__ import annotations

import fcntl
import gzip
import os
from pathlib import Path

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CREATE_VCPU = 0xAE41
KVM_API_VERSION = 12


def test_kvm_api_version_and_vm() -> None:
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        assert fcntl.ioctl(fd, KVM_GET_API_VERSION, 0) == KVM_API_VERSION
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        assert vm >= 0
        try:
            vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
            assert vcpu >= 0
            os.close(vcpu)
        finally:
            os.close(vm)
    finally:
        os.close(fd)


def test_l2_kernel_is_arm64_image(l2_kernel: Path) -> None:
    head = l2_kernel.read_bytes()[:64]
    assert head[56:60] == b"ARM\x64", "arm64 Image magic missing"


def test_l2_initrd_is_gzipped_newc_with_init(l2_initrd: Path) -> None:
    data = gzip.decompress(l2_initrd.read_bytes())
    assert data.startswith(b"070701")
    assert b"init\0" in data and b"PYVMM-L2-USERSPACE-OK" in data


def test_l2_modules_include_virtio_mmio(l2_modules: list[str]) -> None:
    assert "virtio_mmio" in l2_modules


def test_host_kernel_announced(lane_host_kernel) -> None:
    assert lane_host_kernel.release == os.uname().release


def test_append_reaches_host_cmdline(lane_host_cmdline: list[str]) -> None:
    appended = os.environ.get("PYVMM_LANE_APPEND", "").split()
    assert all(word in lane_host_cmdline for word in appended), (appended, lane_host_cmdline)


def test_host_offers_tun_and_vhost() -> None:
    # Built into the custom kernel; loaded from Debian's modules by the lane's /init on the stock one.
    for dev in ("/dev/net/tun", "/dev/vhost-net", "/dev/vhost-vsock"):
        assert os.path.exists(dev), dev
