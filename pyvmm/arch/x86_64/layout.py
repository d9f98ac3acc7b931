"""The x86_64 guest-physical and port map (docs/MACHINES.md is the prose version)."""

# Payloads: flat binaries entered in real mode at CS:IP = 0x1000:0x0000, as kvmtool does.
PAYLOAD_SEGMENT = 0x1000
PAYLOAD_ADDR = PAYLOAD_SEGMENT << 4
PAYLOAD_SP = 0xFFF0
PAYLOAD_LIMIT = 0xA0000  # the legacy video hole starts here

# RAM above this goes above 4 GiB, leaving the usual hole for MMIO and the TSS/identity-map pages.
LOW_RAM_END = 0xC000_0000
HIGH_RAM_START = 0x1_0000_0000
TSS_ADDR = 0xFFFB_D000  # three pages KVM needs (Intel VMX real-mode emulation)
IDENTITY_MAP_ADDR = 0xFFFB_C000

# The interrupt controller is an xAPIC: 8-bit APIC IDs (CPUID leaf 1 EBX[31:24]), 0xFF being the broadcast ID.
# Without x2APIC the machine has at most 255 vCPUs.
MAX_CPUS = 255

COM1_PORT = 0x3F8
COM1_IRQ = 4
TESTDEV_PORT = 0x500

MMIO_START = 0xD000_0000  # virtio-mmio and other MMIO devices go here

# virtio-mmio slots: VIRTIO_MMIO + n * VIRTIO_MMIO_STRIDE, IOAPIC GSI VIRTIO_MMIO_FIRST_GSI + n. A Linux guest finds
# them through `virtio_mmio.device=<size>@<base>:<gsi>` on its command line (machine.kernel_params).
VIRTIO_MMIO = MMIO_START
VIRTIO_MMIO_STRIDE = 0x200
VIRTIO_MMIO_SLOTS = 8
VIRTIO_MMIO_FIRST_GSI = 16  # IOAPIC pins 16-23: unused by the legacy ISA devices
