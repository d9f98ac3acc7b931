"""The device tree pyvmm hands an arm64 guest, generated from the machine's actual devices (with `fdt`): the fixed
parts of the board (CPUs, memory, GIC, timer, PSCI) and one node per device placement the device manager recorded."""

from __future__ import annotations

import os

import fdt

from pyvmm.arch.arm64 import layout
from pyvmm.arch.arm64.gic import Gic
from pyvmm.devices.placement import Placement

GIC_PHANDLE = 1
ITS_PHANDLE = 2
IRQ_TYPE_SPI = 0
IRQ_TYPE_PPI = 1
IRQ_EDGE_RISING = 1
IRQ_LEVEL_HIGH = 4


def _cells64(*values: int) -> list[int]:
    cells: list[int] = []
    for value in values:
        cells += [value >> 32, value & 0xFFFF_FFFF]
    return cells


def _node(name: str, *props: fdt.Property) -> fdt.Node:
    node = fdt.Node(name)
    for prop in props:
        node.append(prop)
    return node


def node_path(placement: Placement) -> str:
    return f"/{placement.identity.node}@{placement.base:x}"


def device_node(placement: Placement) -> fdt.Node:
    identity = placement.identity
    props = [fdt.PropStrings("compatible", *identity.compatible),
             fdt.PropWords("reg", *_cells64(placement.base, placement.size))]
    if placement.irq is not None:
        props.append(fdt.PropWords("interrupts", IRQ_TYPE_SPI, placement.irq,
                                   IRQ_EDGE_RISING if placement.edge else IRQ_LEVEL_HIGH))
    for name, value in identity.properties:
        props.append(fdt.Property(name) if value is True else fdt.PropWords(name, int(value)))
    return _node(node_path(placement)[1:], *props)


def build(*, mpidrs: list[int], memory_base: int, memory_size: int, gic: Gic, bootargs: str,
          initrd: tuple[int, int] | None, devices: list[Placement], stdout: Placement, pmu: bool = False) -> bytes:
    """`devices`: the MMIO placements, in the order they were made; `stdout`: the console's placement; `pmu`: the
    vCPUs have a PMUv3 (its node, like the timer's, is the board's: a per-CPU interrupt, no address)."""
    tree = fdt.FDT()
    root = tree.root
    for prop in (fdt.PropStrings("compatible", "linux,dummy-virt"), fdt.PropWords("#address-cells", 2),
                 fdt.PropWords("#size-cells", 2), fdt.PropWords("interrupt-parent", GIC_PHANDLE),
                 fdt.PropStrings("model", "pyvmm arm64")):
        root.append(prop)

    cpus = _node("cpus", fdt.PropWords("#address-cells", 1), fdt.PropWords("#size-cells", 0))
    for index, mpidr in enumerate(mpidrs):
        cpus.append(_node(f"cpu@{index:x}", fdt.PropStrings("device_type", "cpu"),
                          fdt.PropStrings("compatible", "arm,arm-v8"), fdt.PropStrings("enable-method", "psci"),
                          fdt.PropWords("reg", mpidr & 0xFF_FFFF)))
    root.append(cpus)

    root.append(_node(f"memory@{memory_base:x}", fdt.PropStrings("device_type", "memory"),
                      fdt.PropWords("reg", *_cells64(memory_base, memory_size))))

    reg: list[int] = []
    for base, size in gic.regions:
        reg += _cells64(base, size)
    intc = _node(f"intc@{layout.GIC_DIST:x}", fdt.PropStrings("compatible", gic.compatible),
                 fdt.Property("interrupt-controller"), fdt.PropWords("#interrupt-cells", 3),
                 fdt.PropWords("#address-cells", 2), fdt.PropWords("#size-cells", 2),
                 fdt.PropWords("reg", *reg), fdt.PropWords("phandle", GIC_PHANDLE))
    if gic.its is not None:  # a child of the GIC, in the root's address space (empty `ranges`), as on QEMU's virt
        intc.append(fdt.Property("ranges"))
        intc.append(_node(f"its@{gic.its[0]:x}", fdt.PropStrings("compatible", "arm,gic-v3-its"),
                          fdt.Property("msi-controller"), fdt.PropWords("#msi-cells", 1),
                          fdt.PropWords("reg", *_cells64(*gic.its)), fdt.PropWords("phandle", ITS_PHANDLE)))
    root.append(intc)

    # GICv2 PPIs carry a CPU mask in bits 8-15 of the flags cell; GICv3 has none.
    ppi_flags = IRQ_LEVEL_HIGH | ((((1 << min(len(mpidrs), 8)) - 1) << 8) if gic.version == 2 else 0)
    timer_irqs: list[int] = []
    for ppi in layout.TIMER_PPIS:
        timer_irqs += [IRQ_TYPE_PPI, ppi, ppi_flags]
    root.append(_node("timer", fdt.PropStrings("compatible", "arm,armv8-timer"), fdt.Property("always-on"),
                      fdt.PropWords("interrupts", *timer_irqs)))
    if pmu:
        root.append(_node("pmu", fdt.PropStrings("compatible", "arm,armv8-pmuv3"),
                          fdt.PropWords("interrupts", IRQ_TYPE_PPI, layout.PMU_PPI, ppi_flags)))

    root.append(_node("psci", fdt.PropStrings("compatible", "arm,psci-0.2"), fdt.PropStrings("method", "hvc")))

    for device in devices:
        root.append(device_node(device))

    # An empty command line is an empty string (one NUL byte), which fdt's PropStrings cannot hold.
    bootargs_prop = fdt.PropStrings("bootargs", bootargs) if bootargs else fdt.PropBytes("bootargs", data=b"\0")
    chosen = _node("chosen", bootargs_prop, fdt.PropStrings("stdout-path", node_path(stdout)),
                   fdt.PropBytes("rng-seed", data=os.urandom(64)),
                   fdt.PropWords("kaslr-seed", *_cells64(int.from_bytes(os.urandom(8), "little"))))
    if initrd is not None:
        start, end = initrd
        chosen.append(fdt.PropWords("linux,initrd-start", *_cells64(start)))
        chosen.append(fdt.PropWords("linux,initrd-end", *_cells64(end)))
    root.append(chosen)
    return tree.to_dtb(version=17)
