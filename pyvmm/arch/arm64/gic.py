"""The in-kernel vGIC (v3, or v2 where the host has no v3), created with KVM_CREATE_DEVICE, and with
`--irqchip gicv3-its` a GICv3 ITS (KVM_DEV_TYPE_ARM_VGIC_ITS: MSIs translated into LPIs in the kernel)."""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm_bindings import constants as c

from pyvmm.arch.arm64 import layout
from pyvmm.errors import KvmUnavailableError, UsageError
from pyvmm.kvm.vm import Vm, set_device_attr


@dataclass
class Gic:
    version: int  # 3 or 2
    fd: int
    cpus: int
    its_fd: int | None = None  # the ITS, when asked for

    @property
    def its(self) -> tuple[int, int] | None:
        """(base, size) of the ITS frames for its device-tree node, or None without one."""
        return (layout.GIC_ITS, layout.GIC_ITS_SIZE) if self.its_fd is not None else None

    @property
    def regions(self) -> list[tuple[int, int]]:
        """(base, size) pairs for the device tree's reg property."""
        if self.version == 3:
            return [(layout.GIC_DIST, layout.GIC_DIST_SIZE),
                    (layout.GIC_REDIST, layout.GIC_REDIST_SIZE_PER_CPU * self.cpus)]
        return [(layout.GIC_DIST, 0x1000), (layout.GIC_V2_CPU, layout.GIC_V2_CPU_SIZE)]

    @property
    def compatible(self) -> str:
        return "arm,gic-v3" if self.version == 3 else "arm,cortex-a15-gic"


def _try_create(vm: Vm, device_type: int) -> int | None:
    try:
        return vm.create_device(device_type)
    except OSError:
        return None


def check_cpus(cpus: int, choice: str) -> None:
    """Refuse a vCPU count no vGIC of this layout can serve, before any vCPU (three fds each) is created."""
    if choice == "gicv2" and cpus > layout.GIC_V2_MAX_CPUS:
        raise UsageError(f"--cpus {cpus}: a GICv2 serves at most {layout.GIC_V2_MAX_CPUS} vCPUs")
    if cpus > layout.max_cpus_for_redistributors():
        raise UsageError(f"--cpus {cpus}: the GICv3 redistributor window holds {layout.max_cpus_for_redistributors()}")


def create(vm: Vm, cpus: int, choice: str) -> Gic:
    """Create the vGIC and place it. Call after the vCPUs exist (and `check_cpus` before), then `finalize`."""
    fd = None
    version = 0
    if choice in ("auto", "gicv3", "gicv3-its"):
        fd = _try_create(vm, c.KVM_DEV_TYPE_ARM_VGIC_V3)
        version = 3
        if fd is None and choice != "auto":
            raise KvmUnavailableError(f"this host's KVM cannot emulate a GICv3 (--irqchip {choice}): try "
                                      f"--irqchip gicv2")
    if fd is None:
        if cpus > layout.GIC_V2_MAX_CPUS:
            raise UsageError(f"--cpus {cpus}: a GICv2 serves at most {layout.GIC_V2_MAX_CPUS} vCPUs")
        fd = _try_create(vm, c.KVM_DEV_TYPE_ARM_VGIC_V2)
        version = 2
        if fd is None:
            wanted = "a GICv2 (--irqchip gicv2)" if choice == "gicv2" else "a GICv3 nor a GICv2"
            raise KvmUnavailableError(f"this host's KVM can emulate neither {wanted}" if choice != "gicv2"
                                      else f"this host's KVM cannot emulate {wanted}: try --irqchip gicv3")
    group = c.KVM_DEV_ARM_VGIC_GRP_ADDR
    try:
        if version == 3:
            set_device_attr(fd, group, c.KVM_VGIC_V3_ADDR_TYPE_DIST, layout.GIC_DIST)
            set_device_attr(fd, group, c.KVM_VGIC_V3_ADDR_TYPE_REDIST, layout.GIC_REDIST)
        else:
            set_device_attr(fd, group, c.KVM_VGIC_V2_ADDR_TYPE_DIST, layout.GIC_DIST)
            set_device_attr(fd, group, c.KVM_VGIC_V2_ADDR_TYPE_CPU, layout.GIC_V2_CPU)
    except OSError as err:
        raise KvmUnavailableError(f"KVM refused the vGICv{version} addresses: {err.strerror}") from None
    return Gic(version, fd, cpus, _create_its(vm) if choice == "gicv3-its" else None)


def _create_its(vm: Vm) -> int:
    try:
        its = vm.create_device(c.KVM_DEV_TYPE_ARM_VGIC_ITS)
    except OSError as err:
        raise KvmUnavailableError(f"this host's KVM cannot emulate a GICv3 ITS (KVM_DEV_TYPE_ARM_VGIC_ITS: "
                                  f"{err.strerror}): use --irqchip gicv3") from None
    try:
        set_device_attr(its, c.KVM_DEV_ARM_VGIC_GRP_ADDR, c.KVM_VGIC_ITS_ADDR_TYPE, layout.GIC_ITS)
    except OSError as err:
        raise KvmUnavailableError(f"KVM refused the ITS address {layout.GIC_ITS:#x}: {err.strerror}") from None
    return its


def finalize(gic: Gic) -> None:
    """Size and initialise the vGIC; KVM requires every vCPU to exist (and be initialised) first."""
    try:
        set_device_attr(gic.fd, c.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, layout.NR_IRQS)
        set_device_attr(gic.fd, c.KVM_DEV_ARM_VGIC_GRP_CTRL, c.KVM_DEV_ARM_VGIC_CTRL_INIT)
    except OSError as err:
        raise KvmUnavailableError(f"KVM could not initialise the vGICv{gic.version}: {err.strerror}") from None
    if gic.its_fd is not None:
        try:
            set_device_attr(gic.its_fd, c.KVM_DEV_ARM_VGIC_GRP_CTRL, c.KVM_DEV_ARM_VGIC_CTRL_INIT)
        except OSError as err:
            raise KvmUnavailableError(f"KVM could not initialise the GICv3 ITS: {err.strerror}") from None


def spi_irq_line(spi: int) -> int:
    """The KVM_IRQ_LINE `irq` field for shared peripheral interrupt `spi` (INTID 32 + spi)."""
    return (c.KVM_ARM_IRQ_TYPE_SPI << c.KVM_ARM_IRQ_TYPE_SHIFT) | (layout.SPI_BASE + spi)
