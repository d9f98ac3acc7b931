"""A vCPU: its fd, the shared kvm_run page (mmap'd, read through cffi) and register access."""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

from pyvmm.errors import KvmUnavailableError
from pyvmm.kvm.ioctl import bindings, ffi, ioctl, new
from pyvmm.kvm.vm import Vm


class Vcpu:
    def __init__(self, vm: Vm, index: int) -> None:
        self.vm = vm
        self.index = index
        try:
            self.fd = ioctl(vm.fd, bindings.KVM_CREATE_VCPU, index)
        except OSError as err:
            raise KvmUnavailableError(f"KVM could not create vCPU {index}: {err.strerror}") from None
        size = vm.kvm.vcpu_mmap_size()
        self.run_mmap = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run_buffer = ffi.from_buffer(self.run_mmap)
        self.run = ffi.cast("struct kvm_run *", self._run_buffer)
        self.thread_id: int | None = None  # native TID once its thread runs (for CPU time and affinity)

    def close(self) -> None:
        if self.fd >= 0:
            self.run = None
            ffi.release(self._run_buffer)
            self._run_buffer = None
            self.run_mmap.close()
            os.close(self.fd)
            self.fd = -1

    def request_immediate_exit(self, value: int = 1) -> None:
        """Make the next (or current, once signalled) KVM_RUN return at once with EINTR."""
        self.run.immediate_exit = value

    # -- registers ----------------------------------------------------------------------------------------------
    def get_one_reg(self, reg_id: int) -> int:
        holder = new("uint64_t *")
        request = new("struct kvm_one_reg *")
        request.id = reg_id
        request.addr = int(ffi.cast("uintptr_t", holder))
        ioctl(self.fd, bindings.KVM_GET_ONE_REG, request)
        return int(holder[0])

    def set_one_reg(self, reg_id: int, value: int) -> None:
        holder = new("uint64_t *", value)
        request = new("struct kvm_one_reg *")
        request.id = reg_id
        request.addr = int(ffi.cast("uintptr_t", holder))
        ioctl(self.fd, bindings.KVM_SET_ONE_REG, request)

    def get_struct(self, request_code: int, ctype: str) -> Any:
        """Fill a struct by ioctl (KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_MP_STATE ...)."""
        holder = new(ctype)
        ioctl(self.fd, request_code, holder)
        return holder

    def set_struct(self, request_code: int, holder: Any) -> None:
        ioctl(self.fd, request_code, holder)

    def stats_fd(self) -> int:
        return ioctl(self.fd, bindings.KVM_GET_STATS_FD)

    def set_cpuid2(self, cpuid: Any) -> None:
        """KVM_SET_CPUID2 (x86_64) with a `struct kvm_cpuid2 *` (e.g. from Kvm.supported_cpuid)."""
        ioctl(self.fd, bindings.KVM_SET_CPUID2, cpuid)

    def arm_vcpu_init(self, init: Any) -> None:
        """KVM_ARM_VCPU_INIT (arm64) with a `struct kvm_vcpu_init *` (target and features)."""
        ioctl(self.fd, bindings.KVM_ARM_VCPU_INIT, init)

    def mp_state(self) -> int:
        try:
            return int(self.get_struct(bindings.KVM_GET_MP_STATE, "struct kvm_mp_state *").mp_state)
        except OSError as err:
            if err.errno == errno.EINVAL:
                return -1
            raise
