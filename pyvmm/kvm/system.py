"""/dev/kvm: the API version check, capabilities, and VM creation."""

from __future__ import annotations

import errno
import grp
import os
from dataclasses import dataclass
from typing import Any

from pyvmm.errors import KvmPermissionError, KvmUnavailableError

KVM_API_VERSION = 12
DEFAULT_DEVICE = "/dev/kvm"
DEVICE_ENV = "PYVMM_KVM_DEVICE"  # another KVM node (or, in tests, a path that is not one)


def default_device() -> str:
    return os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE


def _permission_hint(path: str) -> str:
    try:
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
    except (KeyError, OSError):
        return f"ask an administrator for read/write access to {path}"
    return f"add your user to the '{group}' group (sudo usermod -aG {group} $USER, then log in again)"


@dataclass
class Kvm:
    """An open /dev/kvm. Close it (or use `with`) when done."""

    fd: int
    path: str = DEFAULT_DEVICE

    @classmethod
    def open(cls, path: str | None = None) -> "Kvm":
        path = path or default_device()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailableError(
                f"{path} does not exist: load the KVM module (modprobe kvm_intel, kvm_amd, or use an arm64 kernel "
                f"with KVM) or enable virtualization in the firmware"
            ) from None
        except PermissionError:
            raise KvmPermissionError(f"no permission to open {path}: {_permission_hint(path)}") from None
        except OSError as err:
            raise KvmUnavailableError(f"cannot open {path}: {err.strerror}") from None
        kvm = cls(fd, path)
        try:
            version = kvm.api_version()
        except OSError as err:
            kvm.close()
            raise KvmUnavailableError(f"{path} is not a KVM device ({err.strerror})") from None
        if version != KVM_API_VERSION:
            kvm.close()
            raise KvmUnavailableError(f"{path} speaks KVM API {version}; pyvmm needs API {KVM_API_VERSION}")
        return kvm

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Kvm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def api_version(self) -> int:
        from pyvmm.kvm.ioctl import bindings, ioctl

        return ioctl(self.fd, bindings.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm: 0 when absent (or unknown), else a cap-specific value."""
        from pyvmm.kvm.ioctl import check_extension

        return check_extension(self.fd, cap)

    def vcpu_mmap_size(self) -> int:
        from pyvmm.kvm.ioctl import bindings, ioctl

        return ioctl(self.fd, bindings.KVM_GET_VCPU_MMAP_SIZE)

    def max_vcpus(self) -> int:
        """KVM_CAP_MAX_VCPUS, falling back to NR_VCPUS then 4 as api.rst says."""
        from pyvmm_bindings import constants as c

        return self.check_extension(c.KVM_CAP_MAX_VCPUS) or self.check_extension(c.KVM_CAP_NR_VCPUS) or 4

    def create_vm(self, vm_type: int = 0) -> int:
        """KVM_CREATE_VM; returns the VM fd (see pyvmm.kvm.vm.Vm for the object)."""
        from pyvmm.kvm.ioctl import bindings, ioctl

        try:
            return ioctl(self.fd, bindings.KVM_CREATE_VM, vm_type)
        except OSError as err:
            if err.errno in (errno.ENOMEM, errno.EMFILE, errno.ENFILE):
                raise KvmUnavailableError(f"KVM could not create a VM: {err.strerror}") from None
            raise KvmUnavailableError(f"KVM refused to create a VM (type {vm_type}): {err.strerror}") from None

    def supported_cpuid(self) -> tuple[Any, Any]:
        """KVM_GET_SUPPORTED_CPUID (x86_64): (buffer, `struct kvm_cpuid2 *` over it); keep the buffer alive.

        The entry count is not known in advance: KVM answers E2BIG until the array is large enough.
        """
        from pyvmm.kvm.ioctl import bindings, ffi, ioctl

        entries = 128
        while True:
            buffer = ffi.new("char[]", ffi.sizeof("struct kvm_cpuid2")
                             + entries * ffi.sizeof("struct kvm_cpuid_entry2"))
            cpuid = ffi.cast("struct kvm_cpuid2 *", buffer)
            cpuid.nent = entries
            try:
                ioctl(self.fd, bindings.KVM_GET_SUPPORTED_CPUID, cpuid)
                return buffer, cpuid
            except OSError as err:
                if err.errno != errno.E2BIG or entries >= 4096:
                    raise
                entries *= 2
