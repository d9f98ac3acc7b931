"""The Kvm, Vm and Vcpu methods on the real /dev/kvm: each ioctl wrapper is called once and its effect checked."""

from __future__ import annotations

import os

import pytest

from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm
from pyvmm_bindings import constants as c
from pyvmm_bindings import host_arch
from tests.conftest import kvm_usable

pytestmark = pytest.mark.skipif(kvm_usable() is not None, reason=kvm_usable() or "")
x86_only = pytest.mark.skipif(host_arch() != "x86_64", reason="x86_64 ioctls")
arm64_only = pytest.mark.skipif(host_arch() != "arm64", reason="arm64 ioctls")


@pytest.fixture
def vm():
    with Kvm.open() as kvm:
        machine = Vm(kvm)
        yield machine
        machine.close()


def test_enable_cap_and_check_extension(vm):
    assert vm.check_extension(c.KVM_CAP_IRQFD) == 1
    assert vm.kvm.check_extension(c.KVM_CAP_USER_MEMORY) == 1
    with pytest.raises(OSError):
        vm.enable_cap(0x7FFF_FFFF)  # no such capability


def test_irqfd_with_resample_assigns_and_deassigns(vm):
    if host_arch() == "x86_64":
        vm.create_irqchip()
    trigger = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    resample = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        vm.irqfd(trigger, 5, resample_fd=resample)
        with pytest.raises(OSError):
            vm.irqfd(trigger, 5, resample_fd=resample)  # EBUSY: the eventfd is already bound
        vm.irqfd(trigger, 5, deassign=True)
        vm.irqfd(trigger, 5)  # free again, this time edge-style
        vm.irqfd(trigger, 5, deassign=True)
    finally:
        os.close(trigger)
        os.close(resample)


def test_ioeventfd_assigns_and_deassigns(vm):
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        vm.ioeventfd(fd, 0xD000_0050, 4, datamatch=1)
        vm.ioeventfd(fd, 0xD000_0050, 4, datamatch=1, deassign=True)
        with pytest.raises(OSError):
            vm.ioeventfd(fd, 0xD000_0050, 4, datamatch=1, deassign=True)  # ENOENT: nothing left to remove
    finally:
        os.close(fd)


@x86_only
def test_x86_irqchip_pit_and_system_pages(vm):
    vm.set_tss_addr(0xFFFB_D000)
    vm.set_identity_map_addr(0xFFFB_C000)
    vm.create_irqchip()
    with pytest.raises(OSError):
        vm.create_irqchip()  # EEXIST: one per VM
    vm.create_pit2(c.KVM_PIT_SPEAKER_DUMMY)
    vm.irq_line(4, 1)  # needs the irqchip
    vm.irq_line(4, 0)


@x86_only
def test_x86_supported_cpuid_reaches_the_vcpu(vm):
    buffer, cpuid = vm.kvm.supported_cpuid()
    functions = {cpuid.entries[i].function for i in range(cpuid.nent)}
    assert {0, 1} <= functions and cpuid.nent < len(buffer)
    vcpu = Vcpu(vm, 0)
    try:
        vcpu.set_cpuid2(cpuid)
    finally:
        vcpu.close()


@arm64_only
def test_arm64_preferred_target_initialises_a_vcpu(vm):
    init = vm.arm_preferred_target()
    vcpu = Vcpu(vm, 0)
    try:
        vcpu.arm_vcpu_init(init)
    finally:
        vcpu.close()


def test_stats_fds_are_binary_stats(vm):
    from pyvmm.kvm.stats import StatsReader

    if not vm.check_extension(c.KVM_CAP_BINARY_STATS_FD):
        pytest.skip("no binary stats")
    with StatsReader(vm.stats_fd(), owns_fd=True) as reader:
        assert reader.layout.names()


def test_guest_memory_host_address_is_where_the_ram_is_mapped(vm):
    import ctypes

    from pyvmm.errors import GuestMemoryError

    vm.add_ram(0x10_0000, 0x10_0000)
    vm.memory.write(0x12_3450, b"vhost sees this")
    address = vm.memory.host_address(0x12_3450, 15)
    assert ctypes.string_at(address, 15) == b"vhost sees this"
    with pytest.raises(GuestMemoryError):
        vm.memory.host_address(0x1F_FFF0, 0x20)  # runs past the end of RAM
