"""Assemble the x86_64 machine: VM, RAM, in-kernel irqchip, COM1 and the test device on the port bus, vCPUs."""

from __future__ import annotations

from functools import partial

from pyvmm.arch.machine import Machine, MachineContext, discard, read_image
from pyvmm.arch.x86_64 import boot, cpuid, exits, irqchip, layout
from pyvmm.devices import serial, testdev
from pyvmm.devices.manager import DeviceManager, SlotWindow
from pyvmm.devices.placement import BUS_MMIO, BUS_PIO, Placement
from pyvmm.errors import KvmUnavailableError, UsageError
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

ARCH = "x86_64"
# Level-triggered: no table of pyvmm's tells the guest these IOAPIC pins are edge, and a level-configured pin drops a
# pulse that comes while its previous interrupt is not EOI'd; a resamplefd keeps the line up while InterruptStatus
# has a bit set.
VIRTIO_SLOTS = SlotWindow(layout.VIRTIO_MMIO, layout.VIRTIO_MMIO_STRIDE, layout.VIRTIO_MMIO_SLOTS,
                          layout.VIRTIO_MMIO_FIRST_GSI, edge=False)


def _add_ram(vm: Vm, size: int) -> None:
    low = min(size, layout.LOW_RAM_END)
    vm.add_ram(0, low)
    if size > low:
        vm.add_ram(layout.HIGH_RAM_START, size - low)


def _set_system_pages(vm: Vm) -> None:
    try:
        vm.set_tss_addr(layout.TSS_ADDR)
        vm.set_identity_map_addr(layout.IDENTITY_MAP_ADDR)
    except OSError as err:
        raise KvmUnavailableError(f"KVM refused the TSS/identity-map pages: {err.strerror}") from None


def kernel_params(placements: list[Placement]) -> list[str]:
    """The `virtio_mmio.device=<size>@<base>:<gsi>` parameters a Linux guest needs to find the virtio slots (no
    Linux boots on x86_64 here yet: the machine description lists them)."""
    return [f"virtio_mmio.device={p.size:#x}@{p.base:#x}:{p.irq}" for p in placements
            if p.bus == BUS_MMIO and "virtio,mmio" in p.identity.compatible]


def build(ctx: MachineContext) -> Machine:
    spec = ctx.spec
    if spec.cpus > layout.MAX_CPUS:
        raise UsageError(f"--cpus {spec.cpus}: this x86_64 machine has an xAPIC (8-bit APIC IDs), so at most "
                         f"{layout.MAX_CPUS} vCPUs")
    if spec.initrd is not None:
        raise KvmUnavailableError("--initrd needs the Linux boot protocol, which pyvmm implements on arm64 only")
    path = spec.kernel
    if path is None:
        import pyvmm_guests

        path = pyvmm_guests.path(ARCH, "hello")
    payload = read_image(path)
    boot.check_payload(payload, str(path))

    vm = Vm(ctx.kvm)
    vcpus: list[Vcpu] = []
    devices = None
    try:
        _set_system_pages(vm)
        irqchip.create(vm)
        ctx.before_vcpus(vm)
        _add_ram(vm, spec.memory)

        devices = DeviceManager(vm, VIRTIO_SLOTS, irq_line_arg=lambda irq: irq)  # ISA IRQs and GSIs are pins
        uart = serial.Serial16550(ctx.console_output, devices.irq_setter(layout.COM1_IRQ), name="COM1")
        com1 = devices.add(uart, uart.identity, base=layout.COM1_PORT, size=serial.REGISTERS, irq=layout.COM1_IRQ,
                           bus=BUS_PIO)
        test_device = testdev.TestDevice(ctx.on_guest_exit, spec.guest_args)
        devices.add(test_device, test_device.identity, base=layout.TESTDEV_PORT, size=testdev.SIZE, bus=BUS_PIO)
        devices.add_virtio_devices(spec.devices, ctx.console_output)

        load_addr = boot.load_payload(vm, payload)
        for index in range(spec.cpus):
            vcpu = Vcpu(vm, index)
            vcpus.append(vcpu)
            cpuid.set_cpuid(ctx.kvm, vcpu, spec.hide_pv_unhalt)
        if spec.console.coalesce:  # the THR byte: `outb` to 0x3F8 (KVM_CAP_COALESCED_PIO)
            devices.coalesce_writes(uart, com1, serial.RBR_THR, 1, vcpus[0])
        # vCPU 0 is the bootstrap processor; the others wait for INIT/SIPI in the in-kernel LAPIC.
        boot.set_real_mode_entry(vcpus[0])
    except BaseException:
        discard(vm, vcpus, devices)
        raise
    description = {"payload": str(path), "load_address": load_addr, "entry": "real mode 1000:0000"}
    if params := kernel_params(devices.placements):
        description["kernel_params"] = " ".join(params)
    return Machine(
        arch=ARCH, vm=vm, vcpus=vcpus, devices=devices, arch_exits=partial(exits.exits, pio_bus=devices.pio),
        uart=uart, testdev=test_device, console_input=devices.console_input(), description=description,
    )
