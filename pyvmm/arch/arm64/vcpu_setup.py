"""arm64 vCPU initialisation (KVM_ARM_PREFERRED_TARGET + KVM_ARM_VCPU_INIT) and boot registers."""

from __future__ import annotations

from pyvmm_bindings import constants as c

from pyvmm.errors import KvmUnavailableError
from pyvmm.kvm.ioctl import bindings, new
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

MPIDR_EL1 = (c.KVM_REG_ARM64 | c.KVM_REG_SIZE_U64 | c.KVM_REG_ARM64_SYSREG
             | (3 << c.KVM_REG_ARM64_SYSREG_OP0_SHIFT) | (5 << c.KVM_REG_ARM64_SYSREG_OP2_SHIFT))


def preferred_target(vm: Vm):
    try:
        return vm.arm_preferred_target()
    except OSError as err:
        raise KvmUnavailableError(f"KVM has no preferred arm64 vCPU target: {err.strerror}") from None


def init_vcpu(vcpu: Vcpu, target, powered_off: bool, features: int = 0) -> None:
    """PSCI 0.2 for every vCPU; all but the boot vCPU start off until the guest's PSCI CPU_ON. `features`: more
    KVM_ARM_VCPU_* bits for features[0] (e.g. the PMU's)."""
    if not vcpu.vm.check_extension(c.KVM_CAP_ARM_PSCI_0_2):
        raise KvmUnavailableError("this KVM lacks PSCI 0.2 (KVM_CAP_ARM_PSCI_0_2), which pyvmm uses to start vCPUs")
    init = new("struct kvm_vcpu_init *")
    init.target = target.target
    for i in range(7):
        init.features[i] = target.features[i]
    features |= 1 << c.KVM_ARM_VCPU_PSCI_0_2
    if powered_off:
        features |= 1 << c.KVM_ARM_VCPU_POWER_OFF
    init.features[0] |= features
    try:
        vcpu.arm_vcpu_init(init)
    except OSError as err:
        raise KvmUnavailableError(f"KVM could not initialise vCPU {vcpu.index}: {err.strerror}") from None


def mpidr(vcpu: Vcpu) -> int:
    return vcpu.get_one_reg(MPIDR_EL1)


def set_boot_registers(vcpu: Vcpu, entry: int, dtb: int) -> None:
    """Linux arm64 boot protocol: x0 = DTB, x1..x3 = 0, PC = kernel entry; KVM's reset state is EL1h, DAIF masked."""
    vcpu.set_one_reg(bindings.core_reg_id("regs", "regs", 0), dtb)
    for n in (1, 2, 3):
        vcpu.set_one_reg(bindings.core_reg_id("regs", "regs", n), 0)
    vcpu.set_one_reg(bindings.core_reg_id("regs", "pc"), entry)
