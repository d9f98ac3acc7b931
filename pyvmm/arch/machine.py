"""What every architecture's machine builder receives and returns, and the hook for the exits only one arch has."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, NamedTuple

from pyvmm.devices.bus import Bus
from pyvmm.devices.manager import DeviceManager
from pyvmm.devices.serial import Serial16550
from pyvmm.devices.testdev import TestDevice
from pyvmm.errors import ImageError, MissingFileError
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm
from pyvmm.spec import VmSpec

if TYPE_CHECKING:
    from pyvmm.outcome import VmOutcome


class MachineContext(NamedTuple):
    spec: VmSpec
    kvm: Kvm
    console_output: Callable[[bytes], None]
    on_guest_exit: Callable[[int], None]  # the test device's EXIT register was written
    # Called on the VM before any vCPU exists (idle policy caps that must come first, e.g. x86 DISABLE_EXITS).
    before_vcpus: Callable[[Vm], None] = lambda vm: None


class ArchExits(NamedTuple):
    """The exits only this architecture has, for one vCPU (Firecracker's `run_arch_emulation`): the vCPU loop hands
    every exit whose reason is in `reasons` to `handle`, which returns None to go on or how the VM ended.

    `port_bus` is the arch's port I/O bus (x86_64), None where there is no port I/O: the loop dispatches
    KVM_EXIT_IO on it itself, like MMIO (kvmtool's kvm_cpu__emulate_io), because port OUTs are x86 guests' hot
    exit and a call into the hook would cost a Python frame on every one."""

    reasons: frozenset[int]
    handle: Callable[[int], VmOutcome | None]
    port_bus: Bus | None = None


class Machine(NamedTuple):
    arch: str
    vm: Vm
    vcpus: list[Vcpu]
    devices: DeviceManager  # the buses, every device's placement, the virtio devices
    arch_exits: Callable[[Vcpu], ArchExits]  # the per-vCPU handler of this arch's own exits
    uart: Serial16550
    testdev: TestDevice
    description: dict  # what was loaded where, for --debug and the docs
    dtb: bytes | None = None
    console_input: Callable[[bytes], None] | None = None  # where typed input goes; None: the UART

    def close(self) -> None:
        discard(self.vm, self.vcpus, self.devices)


def discard(vm: Vm, vcpus: list[Vcpu], devices: DeviceManager | None = None) -> None:
    """Tear down a machine, whole or half-built: devices first (their workers use guest RAM), vCPUs, then the VM."""
    if devices is not None:
        devices.close()
    for vcpu in vcpus:
        vcpu.close()
    vm.close()


def read_image(path: os.PathLike | str, what: str = "kernel", limit: int = 1 << 31) -> bytes:
    """Read a user-named file whole, with the one-line errors the CLI promises."""
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise ImageError(f"{what} {path} is {size >> 20} MiB: larger than pyvmm can load ({limit >> 20} MiB)")
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise MissingFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise MissingFileError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise MissingFileError(f"{what} {path} is not readable (permission denied)") from None
    except OSError as err:
        raise MissingFileError(f"cannot read {what} {path}: {err.strerror}") from None
    if not data:
        raise ImageError(f"{what} {path} is empty")
    return data


def describe_foreign_image(data: bytes) -> str | None:
    """Name a well-known image format, so a wrong file gets a useful refusal rather than a crashed guest."""
    if data[:4] == b"\x7fELF":
        machine = int.from_bytes(data[18:20], "little") if len(data) >= 20 else 0
        return {62: "an x86_64 ELF file", 3: "an i386 ELF file", 183: "an arm64 ELF file"}.get(machine, "an ELF file")
    if len(data) >= 0x206 and data[0x202:0x206] == b"HdrS":
        return "a Linux x86 bzImage"
    if len(data) >= 60 and data[56:60] == b"ARM\x64":
        return "an arm64 Linux Image"
    if data[:2] == b"\x1f\x8b":
        return "a gzip-compressed file"
    if data[:2] == b"MZ":
        return "a PE/EFI executable"
    if data[:4] == b"\xd0\x0d\xfe\xed":
        return "a device tree blob"
    return None
