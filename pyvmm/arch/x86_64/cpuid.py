"""CPUID for the guest: what KVM supports, with per-vCPU APIC IDs and the PV features the idle policy forbids."""

from __future__ import annotations

import errno

from pyvmm.kvm.ioctl import bindings, ffi, ioctl
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu

KVM_CPUID_FEATURES = 0x4000_0001
KVM_FEATURE_PV_UNHALT = 7


def supported_cpuid(kvm: Kvm):
    entries = 128
    while True:
        buffer = ffi.new("char[]", ffi.sizeof("struct kvm_cpuid2") + entries * ffi.sizeof("struct kvm_cpuid_entry2"))
        cpuid = ffi.cast("struct kvm_cpuid2 *", buffer)
        cpuid.nent = entries
        try:
            ioctl(kvm.fd, bindings.KVM_GET_SUPPORTED_CPUID, cpuid)
            return buffer, cpuid
        except OSError as err:
            if err.errno != errno.E2BIG or entries >= 4096:
                raise
            entries *= 2


def set_cpuid(kvm: Kvm, vcpu: Vcpu, hide_pv_unhalt: bool) -> None:
    buffer, cpuid = supported_cpuid(kvm)
    for i in range(cpuid.nent):
        entry = cpuid.entries[i]
        if entry.function == 1:
            entry.ebx = (entry.ebx & 0x00FF_FFFF) | (vcpu.index << 24)  # initial APIC ID
        elif entry.function == 0xB:
            entry.edx = vcpu.index  # x2APIC ID
        elif entry.function == KVM_CPUID_FEATURES and hide_pv_unhalt:
            # With HLT passthrough a halted vCPU never exits, so a PV spinlock kick would never be seen.
            entry.eax &= ~(1 << KVM_FEATURE_PV_UNHALT)
    ioctl(vcpu.fd, bindings.KVM_SET_CPUID2, cpuid)
