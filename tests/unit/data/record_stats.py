#!/usr/bin/env python3
"""Record the raw bytes of KVM's binary stats fds (VM and vCPU) into this directory.

Pure Python + /dev/kvm (no pyvmm imports), so it runs unchanged on this x86_64 machine and
inside the emulated arm64 host. Output: stats-<arch>-vm.bin, stats-<arch>-vcpu.bin and
stats-<arch>-meta.txt (kernel release and what the guest did, so tests know what to expect).

x86_64: maps 64 KiB at the reset vector (0xffff0000) holding `out 0x10, al; hlt` and runs the
vCPU twice (one KVM_EXIT_IO, then KVM_EXIT_HLT since there is no in-kernel irqchip), so the
vCPU stats have known non-zero counters (recorded here: exits = 2, halt_exits = 1; io_exits
stayed 0 on this machine's kvm_pvm backend, which counts the emulated OUT in insn_emulation).
arm64: KVM_ARM_PREFERRED_TARGET + KVM_ARM_VCPU_INIT so the vCPU is fully set up; not run.

Usage: python3 record_stats.py [OUTPUT_DIR]
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import platform
import struct
import sys

KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_ARM_VCPU_INIT = 0x4020AEAE
KVM_ARM_PREFERRED_TARGET = 0x8020AEAF
KVM_GET_STATS_FD = 0xAECE
KVM_EXIT_IO, KVM_EXIT_HLT = 2, 5


def read_all(fd: int) -> bytes:
    parts, off = [], 0
    while True:
        b = os.pread(fd, 65536, off)
        if not b:
            return b"".join(parts)
        parts.append(b)
        off += len(b)


def run_x86_guest(vm: int, vcpu: int, kvm: int) -> list[int]:
    mem = mmap.mmap(-1, 0x10000, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    code = bytes([0xE6, 0x10, 0xF4])  # out 0x10, al ; hlt
    mem[0xFFF0 : 0xFFF0 + len(code)] = code
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    region = struct.pack("<IIQQQ", 0, 0, 0xFFFF0000, 0x10000, addr)
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
    size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
    run = mmap.mmap(vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    reasons = []
    for _ in range(2):
        fcntl.ioctl(vcpu, KVM_RUN, 0)
        reasons.append(struct.unpack_from("<I", run, 8)[0])  # kvm_run.exit_reason
    run.close()
    return reasons


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    arch = platform.machine()
    arch = {"aarch64": "arm64", "amd64": "x86_64"}.get(arch, arch)
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    note = "vcpu created, not run"
    if arch == "x86_64":
        reasons = run_x86_guest(vm, vcpu, kvm)
        note = f"x86 guest 'out 0x10,al; hlt' run twice, exit reasons {reasons} (expect [2, 5])"
    elif arch == "arm64":
        init = bytearray(32)
        fcntl.ioctl(vm, KVM_ARM_PREFERRED_TARGET, init)
        fcntl.ioctl(vcpu, KVM_ARM_VCPU_INIT, bytes(init))
        note = f"arm64 vcpu initialised (target {struct.unpack_from('<I', init)[0]}), not run"
    for what, fd in (("vm", vm), ("vcpu", vcpu)):
        sfd = fcntl.ioctl(fd, KVM_GET_STATS_FD, 0)
        blob = read_all(sfd)
        os.close(sfd)
        path = os.path.join(out, f"stats-{arch}-{what}.bin")
        with open(path, "wb") as f:
            f.write(blob)
        print(f"{path}: {len(blob)} bytes")
    with open(os.path.join(out, f"stats-{arch}-meta.txt"), "w") as f:
        f.write(f"kernel {platform.release()}\n{note}\n")
    print(note)
    for fd in (vcpu, vm, kvm):
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
