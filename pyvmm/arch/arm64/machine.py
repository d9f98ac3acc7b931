"""Assemble the arm64 machine: VM, RAM, vCPUs, vGIC, UART and test device on the MMIO bus, kernel + DTB."""

from __future__ import annotations

from pyvmm.arch.arm64 import boot, devicetree, exits, gic, image, layout, pmu, vcpu_setup
from pyvmm.arch.machine import Machine, MachineContext, discard, read_image
from pyvmm.devices import serial, testdev
from pyvmm.devices.manager import DeviceManager, SlotWindow
from pyvmm.errors import MissingFileError, UsageError
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

ARCH = "arm64"
# Edge-triggered SPIs, as kvmtool's: an irqfd without resample pulses them, and nothing wakes the device's worker
# when the guest EOIs (pyvmm/devices/virtio/interrupt.py).
VIRTIO_SLOTS = SlotWindow(layout.VIRTIO_MMIO, layout.VIRTIO_MMIO_STRIDE, layout.VIRTIO_MMIO_SLOTS,
                          layout.VIRTIO_MMIO_FIRST_SPI, edge=True)


def guest_bootargs(user: str, exact: bool) -> str:
    """The user's command line, plus the console pyvmm provides unless the user chose one. `exact` (a raw binary, or
    --nodefaults): the user's text alone, since a bare-metal test such as kvm-unit-tests reads it as its argv."""
    if exact:
        return user
    extra = [] if "console=" in user else ["console=ttyS0", "earlycon"]
    return " ".join(part for part in [user.strip(), *extra] if part)


def build(ctx: MachineContext) -> Machine:
    spec = ctx.spec
    path = spec.kernel
    if path is None:
        import pyvmm_guests

        path = pyvmm_guests.path(ARCH, "hello")
    kernel = image.parse(read_image(path), str(path))
    initrd_data = read_image(spec.initrd, "initrd") if spec.initrd is not None else None
    placement = boot.place(kernel, len(initrd_data) if initrd_data is not None else None, layout.RAM, spec.memory)

    vm = Vm(ctx.kvm)
    vcpus: list[Vcpu] = []
    devices = None
    try:
        ctx.before_vcpus(vm)
        vm.add_ram(layout.RAM, spec.memory)
        gic.check_cpus(spec.cpus, spec.irqchip)
        target = vcpu_setup.preferred_target(vm)
        if spec.pmu:
            pmu.check(vm)
        for index in range(spec.cpus):
            vcpu = Vcpu(vm, index)
            vcpus.append(vcpu)
            vcpu_setup.init_vcpu(vcpu, target, powered_off=index > 0, features=pmu.VCPU_FEATURE if spec.pmu else 0)
        interrupt_controller = gic.create(vm, spec.cpus, spec.irqchip)
        gic.finalize(interrupt_controller)
        if spec.pmu:
            pmu.init(vcpus)  # after the vGIC's initialisation, which KVM's PMU init requires

        devices = DeviceManager(vm, VIRTIO_SLOTS, irq_line_arg=gic.spi_irq_line)
        uart = serial.Serial16550(ctx.console_output, devices.irq_setter(layout.UART_SPI), name="ttyS0")
        console = devices.add(uart, uart.identity, base=layout.UART, size=layout.UART_SIZE, irq=layout.UART_SPI)
        if spec.console.coalesce:  # the THR byte (reg-io-width 1: Linux's 8250 and earlycon use byte stores)
            devices.coalesce_writes(uart, console, serial.RBR_THR, 1, vcpus[0])
            devices.mirror_reads(uart, console)  # and LSR, read before every byte, from a read-only page
        test_device = testdev.TestDevice(ctx.on_guest_exit, spec.guest_args)
        devices.add(test_device, test_device.identity, base=layout.TESTDEV, size=testdev.SIZE)
        devices.add_virtio_devices(spec.devices, ctx.console_output)

        vm.memory.write(placement.kernel, kernel.data)
        initrd_range = None
        if initrd_data is not None:
            vm.memory.write(placement.initrd, initrd_data)
            initrd_range = (placement.initrd, placement.initrd + len(initrd_data))
        dtb = devicetree.build(
            mpidrs=[vcpu_setup.mpidr(v) for v in vcpus], memory_base=layout.RAM, memory_size=spec.memory,
            gic=interrupt_controller, bootargs=guest_bootargs(spec.cmdline, exact=kernel.raw or spec.nodefaults),
            initrd=initrd_range, devices=devices.placements, stdout=console, pmu=spec.pmu,
        )
        if len(dtb) > layout.DTB_MAX_SIZE:
            raise UsageError(f"the generated device tree is {len(dtb)} bytes, over the 2 MiB the boot protocol allows: "
                             f"configure fewer devices")
        vm.memory.write(placement.dtb, dtb)
        if spec.dtb_dump is not None:
            try:
                spec.dtb_dump.write_bytes(dtb)
            except OSError as err:
                raise MissingFileError(f"cannot write --dump-dtb {spec.dtb_dump}: {err.strerror}") from None
        vcpu_setup.set_boot_registers(vcpus[0], placement.kernel, placement.dtb)
    except BaseException:
        discard(vm, vcpus, devices)
        raise
    return Machine(
        arch=ARCH, vm=vm, vcpus=vcpus, devices=devices, arch_exits=exits.exits, uart=uart, testdev=test_device,
        dtb=dtb, console_input=devices.console_input(),
        description={"kernel": str(path), "kernel_address": placement.kernel, "dtb_address": placement.dtb,
                     "initrd_address": placement.initrd, "gic": f"v{interrupt_controller.version}",
                     "its": interrupt_controller.its is not None, "pmu": spec.pmu},
    )
