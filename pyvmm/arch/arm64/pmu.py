"""`--pmu`: a PMUv3 for the guest, as kvmtool's arm/pmu.c and QEMU's virt give one (Documentation/virt/kvm/devices/
vcpu.rst): the KVM_ARM_VCPU_PMU_V3 feature at vCPU init, then on every vCPU its overflow interrupt (PPI 7 = INTID 23)
and KVM_ARM_VCPU_PMU_V3_INIT, once the vGIC is initialised; the guest finds it through an `arm,armv8-pmuv3` node."""

from __future__ import annotations

from pyvmm_bindings import constants as c

from pyvmm.arch.arm64 import layout
from pyvmm.errors import KvmUnavailableError
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

VCPU_FEATURE = 1 << c.KVM_ARM_VCPU_PMU_V3
INTID = 16 + layout.PMU_PPI  # PPIs are INTIDs 16-31


def check(vm: Vm) -> None:
    """Refuse before any vCPU exists when this host's KVM cannot give a guest a PMU."""
    if not vm.check_extension(c.KVM_CAP_ARM_PMU_V3):
        raise KvmUnavailableError("--pmu: this host's KVM has no PMU for guests (KVM_CAP_ARM_PMU_V3 is missing: the "
                                  "host kernel lacks a PMU driver for this CPU, or the CPU has none); run without "
                                  "--pmu")


def init(vcpus: list[Vcpu]) -> None:
    """The overflow interrupt and KVM's PMU initialisation on every vCPU; the vGIC must be initialised already."""
    for vcpu in vcpus:
        try:
            vcpu.set_device_attr(c.KVM_ARM_VCPU_PMU_V3_CTRL, c.KVM_ARM_VCPU_PMU_V3_IRQ, INTID)
            vcpu.set_device_attr(c.KVM_ARM_VCPU_PMU_V3_CTRL, c.KVM_ARM_VCPU_PMU_V3_INIT)
        except OSError as err:
            raise KvmUnavailableError(f"--pmu: KVM could not set up the PMU of vCPU {vcpu.index}: "
                                      f"{err.strerror}") from None
