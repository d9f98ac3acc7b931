"""Where a device sits and how a guest recognises it: the records the device manager keeps and the arch code renders
(device-tree nodes on arm64, `virtio_mmio.device=` kernel parameters on x86_64)."""

from __future__ import annotations

from typing import NamedTuple

BUS_MMIO = "mmio"
BUS_PIO = "pio"


class GuestIdentity(NamedTuple):
    """A device's self-description: its device-tree node name, compatible strings and extra properties (a
    property whose value is True is an empty marker such as `dma-coherent`)."""

    node: str
    compatible: tuple[str, ...]
    properties: tuple[tuple[str, int | bool], ...] = ()


class Placement(NamedTuple):
    identity: GuestIdentity
    bus: str  # BUS_MMIO or BUS_PIO
    base: int
    size: int
    irq: int | None = None  # arm64: SPI number; x86_64: ISA IRQ / IOAPIC GSI
    edge: bool = False  # the interrupt is edge-triggered (rising), else level-high (arm64 renders it in the DT)
