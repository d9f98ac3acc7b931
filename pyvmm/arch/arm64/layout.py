"""The arm64 guest-physical map (docs/MACHINES.md is the prose version). Follows QEMU's `virt` machine."""

GIC_DIST = 0x0800_0000
GIC_DIST_SIZE = 0x1_0000
GIC_V2_CPU = 0x0801_0000
GIC_V2_CPU_SIZE = 0x2000
GIC_ITS = 0x0808_0000  # --irqchip gicv3-its: the ITS's 64 KiB control + 64 KiB translation frames
GIC_ITS_SIZE = 0x2_0000
GIC_REDIST = 0x080A_0000
GIC_REDIST_SIZE_PER_CPU = 0x2_0000
GIC_REDIST_LIMIT = 0x0900_0000  # redistributors must end below the UART: 123 vCPUs
GIC_V2_MAX_CPUS = 8

UART = 0x0900_0000
UART_SIZE = 0x1000
UART_SPI = 1  # INTID 33

TESTDEV = 0x0901_0000  # its size is the device's own (pyvmm.devices.testdev.SIZE)

VIRTIO_MMIO = 0x0A00_0000
VIRTIO_MMIO_STRIDE = 0x200
VIRTIO_MMIO_SLOTS = 32
VIRTIO_MMIO_FIRST_SPI = 16  # INTID 48 + n; on arm64 the irqfd GSI of an SPI is its number

RAM = 0x4000_0000

SPI_BASE = 32  # INTIDs of shared peripheral interrupts start here
NR_IRQS = 128  # SPIs + PPIs + SGIs the vGIC is sized for (a multiple of 32)

# --pmu: the PMU overflow interrupt, PPI 7 = INTID 23 (as QEMU's virt and kvmtool), in device-tree numbering.
PMU_PPI = 7

# Arch timer PPIs as device-tree interrupt numbers (INTID - 16): secure phys, non-secure phys, virtual, hypervisor.
TIMER_PPIS = (13, 14, 11, 10)

# Linux arm64 boot protocol placements.
KERNEL_ALIGN = 2 << 20
DTB_MAX_SIZE = 2 << 20


def max_cpus_for_redistributors() -> int:
    return (GIC_REDIST_LIMIT - GIC_REDIST) // GIC_REDIST_SIZE_PER_CPU
