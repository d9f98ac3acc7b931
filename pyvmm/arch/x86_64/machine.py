"""Assemble the x86_64 machine: VM, RAM, in-kernel irqchip, COM1 and the test device on the port bus, vCPUs."""

from __future__ import annotations

from pyvmm.arch.machine import Machine, MachineContext, discard, read_image
from pyvmm.arch.x86_64 import boot, cpuid, irqchip, layout
from pyvmm.devices.bus import Bus
from pyvmm.devices.serial import Serial16550
from pyvmm.devices.testdev import SIZE as TESTDEV_SIZE
from pyvmm.devices.testdev import TestDevice
from pyvmm.errors import KvmUnavailableError
from pyvmm.kvm.ioctl import bindings, ioctl, new
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

ARCH = "x86_64"


def _add_ram(vm: Vm, size: int) -> None:
    low = min(size, layout.LOW_RAM_END)
    vm.add_ram(0, low)
    if size > low:
        vm.add_ram(layout.HIGH_RAM_START, size - low)


def _set_system_pages(vm: Vm) -> None:
    try:
        ioctl(vm.fd, bindings.KVM_SET_TSS_ADDR, layout.TSS_ADDR)
        ioctl(vm.fd, bindings.KVM_SET_IDENTITY_MAP_ADDR, new("uint64_t *", layout.IDENTITY_MAP_ADDR))
    except OSError as err:
        raise KvmUnavailableError(f"KVM refused the TSS/identity-map pages: {err.strerror}") from None


def build(ctx: MachineContext) -> Machine:
    spec = ctx.spec
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
    virtio = None
    try:
        _set_system_pages(vm)
        irqchip.create(vm)
        ctx.before_vcpus(vm)
        _add_ram(vm, spec.memory)

        pio_bus = Bus("port I/O")
        mmio_bus = Bus("MMIO")
        uart = Serial16550(ctx.console_output, lambda level: vm.irq_line(layout.COM1_IRQ, level), name="COM1")
        pio_bus.register(layout.COM1_PORT, 8, uart)
        testdev = TestDevice(ctx.on_guest_exit, spec.guest_args)
        pio_bus.register(layout.TESTDEV_PORT, TESTDEV_SIZE, testdev)

        # -- virtio devices (pyvmm/devices/virtio/setup.py): virtio-mmio slots from layout.MMIO_START, IOAPIC GSIs
        # 16 + n. A Linux guest finds them through `virtio_mmio.device=0x200@<base>:<gsi>` on its command line
        # (VirtioDevices.kernel_params()); no Linux boots on x86_64 here, so nothing adds them automatically yet.
        if spec.devices:
            from pyvmm.devices.virtio import setup as virtio_setup

            virtio = virtio_setup.attach_x86_64(vm, mmio_bus, spec.devices, ctx.console_output)
        # -- end of virtio devices ---------------------------------------------------------------------------------

        load_addr = boot.load_payload(vm, payload)
        for index in range(spec.cpus):
            vcpu = Vcpu(vm, index)
            vcpus.append(vcpu)
            cpuid.set_cpuid(ctx.kvm, vcpu, spec.hide_pv_unhalt)
        # vCPU 0 is the bootstrap processor; the others wait for INIT/SIPI in the in-kernel LAPIC.
        boot.set_real_mode_entry(vcpus[0])
    except BaseException:
        discard(vm, vcpus, virtio)
        raise
    return Machine(
        arch=ARCH, vm=vm, vcpus=vcpus, mmio_bus=mmio_bus, pio_bus=pio_bus, uart=uart, testdev=testdev,
        virtio=virtio, console_input=virtio.console_input() if virtio is not None else None,
        description={"payload": str(path), "load_address": load_addr, "entry": "real mode 1000:0000"},
    )
