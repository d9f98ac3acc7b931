"""/dev/kvm: the API version check, capabilities, and VM creation."""

from __future__ import annotations

import errno
import grp
import os
from typing import Any

from pyvmm.errors import KvmPermissionError, KvmUnavailableError

KVM_API_VERSION = 12
DEFAULT_DEVICE = "/dev/kvm"
DEVICE_ENV = "PYVMM_KVM_DEVICE"  # another KVM node (or, in tests, a path that is not one)


def default_device() -> str:
    return os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE


def permission_advice(path: str) -> str:
    """What to do about EACCES on `path`, from its real owner, group and mode: join a group only when that group
    may read and write it; otherwise an ACL for this user, or a udev rule that gives the node to the kvm group."""
    import pwd

    try:
        st = os.stat(path)
    except OSError:
        return f"ask an administrator for read/write access to {path}"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    mode = st.st_mode & 0o777
    found = f"{path} is {owner}:{group} mode {mode:04o}"
    if mode & 0o060 == 0o060 and st.st_gid != 0:
        if st.st_gid in os.getgroups():
            return f"{found}; you are in '{group}' but this session is not yet: log in again (or run `newgrp {group}`)"
        return f"{found}: add your user to the '{group}' group (sudo usermod -aG {group} $USER, then log in again)"
    return (f"{found}, which its group may not use: grant yourself access with `sudo setfacl -m u:$USER:rw {path}` "
            f"(until the next boot), or for good with a udev rule such as "
            f"KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0660\" in /etc/udev/rules.d/65-kvm.rules and membership of "
            f"the kvm group")


class Kvm:
    """An open /dev/kvm. Close it (or use `with`) when done."""

    def __init__(self, fd: int, path: str = DEFAULT_DEVICE) -> None:
        self.fd = fd
        self.path = path

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
            raise KvmPermissionError(f"no permission to open {path}: {permission_advice(path)}") from None
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
