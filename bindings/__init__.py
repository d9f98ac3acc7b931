"""KVM ioctl bindings for pyvmm: cffi declarations, ioctl numbers, libc's ioctl.

    b = pyvmm_bindings.load()            # host arch; load("arm64") works on any host
    run = b.ffi.cast("struct kvm_run *", mmap_address)
    b.lib.ioctl(vcpu_fd, b.KVM_RUN, b.ffi.NULL)

Import stays cheap: the out-of-line ABI modules need only _cffi_backend (not
cffi's parser); ioctl_opt (which imports ctypes) is imported by load().
"""

from __future__ import annotations

import importlib
import os
from types import MappingProxyType
from typing import Any, Mapping

ARCHES = ("x86_64", "arm64")
# os.uname().machine is what platform.machine() returns, without importing platform.
_MACHINE_TO_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}

_cache: dict[str, "Bindings"] = {}


class Bindings:
    """cffi FFI for one arch, libc (host arch only) and every ioctl number (KVM, vhost, TUN) as an attribute."""

    arch: str
    ffi: Any
    lib: Any
    ioctls: Mapping[str, int]

    def __init__(self, arch: str, ffi: Any, lib: Any, ioctls: dict[str, int]) -> None:
        self.arch = arch
        self.ffi = ffi
        self.lib = lib
        self.ioctls = MappingProxyType(ioctls)
        self.__dict__.update(ioctls)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not set: say why instead of a bare AttributeError.
        if name.startswith(("KVM_", "VHOST_", "TUN")):
            raise AttributeError(f"{name} is not a known {self.arch} ioctl")
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<Bindings {self.arch}: {len(self.ioctls)} ioctls, lib={'libc' if self.lib else None}>"

    def core_reg_id(self, *path: str | int, size: int | None = None) -> int:
        """arm64 ONE_REG id of a kvm_regs field, e.g. core_reg_id("regs", "pc"), ("regs", "regs", 3).

        The id encodes offsetof(struct kvm_regs, field) / 4 (KVM_REG_ARM_CORE_REG in
        asm/kvm.h). size defaults to KVM_REG_SIZE_U64 (pass KVM_REG_SIZE_U128 for
        fp_regs.vregs, KVM_REG_SIZE_U32 for fpsr/fpcr).
        """
        if self.arch != "arm64":
            raise ValueError(f"core_reg_id is an arm64 ONE_REG encoding; these bindings are {self.arch}")
        from . import constants as c

        offset = self.ffi.offsetof("struct kvm_regs", *path)
        reg_size = c.KVM_REG_SIZE_U64 if size is None else size
        return c.KVM_REG_ARM64 | reg_size | c.KVM_REG_ARM_CORE | (offset // 4)


def host_arch() -> str:
    machine = os.uname().machine
    try:
        return _MACHINE_TO_ARCH[machine]
    except KeyError:
        raise ValueError(f"unsupported host machine {machine!r}: pyvmm supports x86_64 and aarch64") from None


def _ioctl_numbers(arch: str, ffi: Any) -> dict[str, int]:
    from ioctl_opt import IOC

    from .ioctls import BY_ARCH

    return {
        name: IOC(direction, kind, nr, 0 if argtype is None else ffi.sizeof(argtype))
        for kind, table in BY_ARCH[arch]
        for name, (direction, nr, argtype) in table.items()
    }


def load(arch: str | None = None) -> Bindings:
    """Bindings for arch ("x86_64" or "arm64"; None = host), cached per arch."""
    if arch is None:
        arch = host_arch()
    cached = _cache.get(arch)
    if cached is not None:
        return cached
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHES)}")
    ffi = importlib.import_module(f"{__name__}._kvm_{arch}").ffi
    # dlopen(None) = the symbols already in the process, i.e. libc. Only for the host:
    # calling ioctl with another arch's structs would be meaningless.
    lib = ffi.dlopen(None) if arch == host_arch() else None
    bindings = Bindings(arch, ffi, lib, _ioctl_numbers(arch, ffi))
    _cache[arch] = bindings
    return bindings


__all__ = ["ARCHES", "Bindings", "host_arch", "load"]
