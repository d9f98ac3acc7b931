"""Loading a flat real-mode payload and setting up the boot vCPU for it."""

from __future__ import annotations

from pyvmm.arch.machine import describe_foreign_image
from pyvmm.arch.x86_64 import layout
from pyvmm.errors import ImageError
from pyvmm.kvm.ioctl import bindings
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm


def check_payload(data: bytes, path: str) -> None:
    foreign = describe_foreign_image(data)
    if foreign == "a Linux x86 bzImage":
        raise ImageError(
            f"{path} is a Linux x86 bzImage: pyvmm does not implement the x86 Linux boot protocol yet (on x86_64 it "
            f"runs flat real-mode payloads; Linux guests are booted on arm64 with an Image)"
        )
    if foreign is not None:
        raise ImageError(f"{path} is {foreign}, not a flat real-mode x86 payload")
    room = layout.PAYLOAD_LIMIT - layout.PAYLOAD_ADDR
    if len(data) > room:
        raise ImageError(f"{path} is {len(data)} bytes; a real-mode payload must fit in {room} bytes below 0xA0000")


def load_payload(vm: Vm, data: bytes) -> int:
    vm.memory.write(layout.PAYLOAD_ADDR, data)
    return layout.PAYLOAD_ADDR


def set_real_mode_entry(vcpu: Vcpu) -> None:
    sregs = vcpu.get_struct(bindings.KVM_GET_SREGS, "struct kvm_sregs *")
    for segment in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        segment.selector = layout.PAYLOAD_SEGMENT
        segment.base = layout.PAYLOAD_ADDR
    vcpu.set_struct(bindings.KVM_SET_SREGS, sregs)
    regs = vcpu.get_struct(bindings.KVM_GET_REGS, "struct kvm_regs *")
    regs.rip = 0
    regs.rsp = layout.PAYLOAD_SP
    regs.rflags = 0x2  # bit 1 is reserved-as-one; interrupts off until the payload enables them
    vcpu.set_struct(bindings.KVM_SET_REGS, regs)
