"""CPUID for the guest: what KVM supports, with per-vCPU APIC IDs and the PV features the idle policy forbids."""

from __future__ import annotations

from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu

KVM_CPUID_FEATURES = 0x4000_0001
KVM_FEATURE_PV_UNHALT = 7


def set_cpuid(kvm: Kvm, vcpu: Vcpu, hide_pv_unhalt: bool) -> None:
    buffer, cpuid = kvm.supported_cpuid()  # `buffer` owns the memory `cpuid` points into: keep it to the end
    for i in range(cpuid.nent):
        entry = cpuid.entries[i]
        if entry.function == 1:
            entry.ebx = (entry.ebx & 0x00FF_FFFF) | (vcpu.index << 24)  # initial APIC ID
        elif entry.function == 0xB:
            entry.edx = vcpu.index  # x2APIC ID
        elif entry.function == KVM_CPUID_FEATURES and hide_pv_unhalt:
            # With HLT passthrough a halted vCPU never exits, so a PV spinlock kick would never be seen.
            entry.eax &= ~(1 << KVM_FEATURE_PV_UNHALT)
    vcpu.set_cpuid2(cpuid)
