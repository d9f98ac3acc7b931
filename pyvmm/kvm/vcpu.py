"""A vCPU: its fd, the shared kvm_run page (mmap'd, decoded here) and register access."""

from __future__ import annotations

import errno
import mmap
import os
import struct
from typing import Any, Callable

from pyvmm_bindings import constants as c

from pyvmm.errors import KvmUnavailableError
from pyvmm.kvm.coalesced import CoalescedRing
from pyvmm.kvm.ioctl import NoArgIoctl, bind_no_arg, bindings, ffi, ioctl, new
from pyvmm.kvm.vm import Vm, set_device_attr

# kvm_run.io is {u8 direction; u8 size; u16 port; u32 count; u64 data_offset}, kvm_run.mmio is
# {u64 phys_addr; u8 data[8]; u32 len; u8 is_write}: tests/unit/test_structure.py checks these against cffi.
IO_EXIT = struct.Struct("<BBHIQ")
MMIO_EXIT = struct.Struct("<QQIB")  # data read as one little-endian u64: mask it to `len` bytes (VALUE_MASK)
EXIT_REASON_OFFSET = ffi.offsetof("struct kvm_run", "exit_reason")
IO_OFFSET = ffi.offsetof("struct kvm_run", "io")
MMIO_OFFSET = ffi.offsetof("struct kvm_run", "mmio")
MMIO_DATA_OFFSET = MMIO_OFFSET + 8
MMIO_MAX_LEN = 8
# The exit records as the vCPU loop reads them: exit_reason and the union's record in one unpack (one call per exit):
# (reason, phys_addr, data, len, is_write) and (reason, direction, size, port, count, data_offset, pio_data), where
# pio_data is the u64 at the start of KVM's port I/O data page, where x86 KVM always puts the data (data_offset says
# so): a port OUT's value is pio_data masked to its size, with no second unpack.
_GAP = IO_OFFSET - EXIT_REASON_OFFSET - 4  # exit_reason's neighbours up to the union; MMIO_OFFSET == IO_OFFSET
PIO_DATA_OFFSET = c.KVM_PIO_PAGE_OFFSET * mmap.PAGESIZE
MMIO_RECORD = struct.Struct(f"<I{_GAP}xQQIB")
IO_RECORD = struct.Struct(f"<I{_GAP}xBBHIQ{PIO_DATA_OFFSET - IO_OFFSET - IO_EXIT.size}xQ")
VALUE_MASK = [(1 << (8 * n)) - 1 for n in range(MMIO_MAX_LEN + 1)]  # by access size in bytes
# Little-endian unpack of a 1/2/4/8-byte value at an offset of the page (cheaper than slicing + int.from_bytes), and
# the store of one: PACK_VALUE[size](page, MMIO_DATA_OFFSET, value) answers an MMIO load.
_VALUES = {size: struct.Struct(f"<{code}") for size, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))}
UNPACK_VALUE = {size: value.unpack_from for size, value in _VALUES.items()}
PACK_VALUE = {size: value.pack_into for size, value in _VALUES.items()}
MmioRecord = tuple[int, int, int, int, int]
IoRecord = tuple[int, int, int, int, int, int, int]


class RunPage:
    """The kvm_run page KVM and the vCPU thread share: the exit record decoded, the answer to a read written back.

    The hot fields are read without cffi, whose attribute access costs several times a struct unpack. `mmio_record`
    and `io_record` are (unpack, view) pairs: `unpack(view)` is one C call (Struct.unpack of a memoryview of exactly
    the record's bytes: a one-argument call, cheaper than unpack_from's offset or a functools.partial) that returns
    the exit reason with the record it would have (MmioRecord, IoRecord); `mmio_exit()` and `io_exit()` make the same
    call. io_record is None on a page too small to hold KVM's port I/O data page (arm64's, which has no port I/O).
    Everything else reads the page through cffi (`run`). Works on any writable buffer of the page's size, so tests
    need no /dev/kvm.
    """

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self._cdata = ffi.from_buffer(buffer)
        self.run = ffi.cast("struct kvm_run *", self._cdata)
        self._views = [memoryview(buffer)]
        self.mmio_record: tuple[Callable[[memoryview], MmioRecord], memoryview] = (
            MMIO_RECORD.unpack, self._view(MMIO_RECORD.size))
        self.io_record: tuple[Callable[[memoryview], IoRecord], memoryview] | None = None
        if len(buffer) >= EXIT_REASON_OFFSET + IO_RECORD.size:
            self.io_record = (IO_RECORD.unpack, self._view(IO_RECORD.size))

    def _view(self, size: int) -> memoryview:
        view = self._views[0][EXIT_REASON_OFFSET : EXIT_REASON_OFFSET + size]
        self._views.append(view)
        return view

    def mmio_exit(self) -> MmioRecord:
        unpack, view = self.mmio_record
        return unpack(view)

    def io_exit(self) -> IoRecord:
        if self.io_record is None:
            raise ValueError("this kvm_run mapping has no port I/O data page")
        unpack, view = self.io_record
        return unpack(view)

    def release(self) -> None:
        """End cffi's and the record views' exports of the buffer (an mmap cannot close while exported)."""
        self.run = None
        ffi.release(self._cdata)
        for view in reversed(self._views):
            view.release()

    def set_immediate_exit(self, value: bool) -> None:
        """Make the next (or current, once signalled) KVM_RUN return at once with EINTR."""
        self.run.immediate_exit = int(value)

    def complete_mmio_read(self, length: int, value: int | None) -> None:
        """The value the guest's MMIO load gets; None (nobody claims the address) reads as all-ones."""
        if not 0 < length <= MMIO_MAX_LEN:
            return
        data = (b"\xff" * length if value is None
                else (value & ((1 << (8 * length)) - 1)).to_bytes(length, "little"))
        self.buffer[MMIO_DATA_OFFSET : MMIO_DATA_OFFSET + length] = data

    def io_out(self, write: Callable[[int, int, int], object], port: int, size: int, count: int,
               data_offset: int) -> None:
        """Hand each of the `count` values of a port OUT (more than one for `rep outs`) to write(port, size, value)."""
        buffer = self.buffer
        for at in range(data_offset, data_offset + size * count, size):
            write(port, size, int.from_bytes(buffer[at : at + size], "little"))

    def io_in(self, read: Callable[[int, int], int | None], port: int, size: int, count: int,
              data_offset: int) -> None:
        """Answer a port IN with read(port, size), once per repetition (`rep ins`); None reads as all-ones."""
        mask = (1 << (8 * size)) - 1
        for at in range(data_offset, data_offset + size * count, size):
            value = read(port, size)
            self.buffer[at : at + size] = (mask if value is None else value & mask).to_bytes(size, "little")

    # -- the rarer exits ----------------------------------------------------------------------------------------
    def system_event_type(self) -> int:
        return int(self.run.system_event.type)

    def internal_error(self) -> tuple[int, list[int]]:
        """(suberror, data words) of KVM_EXIT_INTERNAL_ERROR."""
        internal = self.run.internal
        return int(internal.suberror), [int(internal.data[i]) for i in range(min(int(internal.ndata), 16))]

    def fail_entry(self) -> tuple[int, int]:
        """(hardware entry failure reason, host CPU) of KVM_EXIT_FAIL_ENTRY."""
        fail = self.run.fail_entry
        return int(fail.hardware_entry_failure_reason), int(fail.cpu)

    def hardware_exit_reason(self) -> int:
        return int(self.run.hw.hardware_exit_reason)


class Vcpu:
    def __init__(self, vm: Vm, index: int) -> None:
        self.vm = vm
        self.index = index
        try:
            self.fd = ioctl(vm.fd, bindings.KVM_CREATE_VCPU, index)
        except OSError as err:
            raise KvmUnavailableError(f"KVM could not create vCPU {index}: {err.strerror}") from None
        size = vm.kvm.vcpu_mmap_size()
        self._run_mmap = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.page = RunPage(self._run_mmap)
        # KVM_RUN, called once per exit as `call(fd, request)`; raises OSError (EINTR after a kick).
        self.kvm_run: NoArgIoctl = bind_no_arg(self.fd, bindings.KVM_RUN)
        self.thread_id: int | None = None  # native TID once its thread runs (for CPU time and affinity)
        # Opened now, while no thread is in KVM_RUN: a vCPU ioctl waits for the vCPU's mutex, which KVM_RUN holds for
        # as long as the vCPU is blocked (an x86 AP waiting for its SIPI: forever).
        try:
            self._stats_fd = ioctl(self.fd, bindings.KVM_GET_STATS_FD)
        except OSError:
            self._stats_fd = -1  # a kernel without binary stats (< 5.14): stats_fd() raises as it always did

    def close(self) -> None:
        if self._stats_fd >= 0:
            os.close(self._stats_fd)
            self._stats_fd = -1
        if self.fd >= 0:
            self.page.release()
            self._run_mmap.close()
            os.close(self.fd)
            self.fd = -1

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
        """A new stats fd (the caller owns it): a duplicate of the one opened with the vCPU, so that a running
        vCPU is never waited for."""
        if self._stats_fd >= 0:
            return os.dup(self._stats_fd)
        return ioctl(self.fd, bindings.KVM_GET_STATS_FD)

    def coalesced_ring(self, page_offset: int) -> CoalescedRing:
        """Map the VM's coalesced MMIO/PIO ring from this vCPU's fd (`page_offset`: the value of
        KVM_CHECK_EXTENSION(KVM_CAP_COALESCED_MMIO)); the caller closes it. Raises OSError or ValueError."""
        return CoalescedRing.map(self.fd, page_offset, self.vm.kvm.vcpu_mmap_size())

    def set_cpuid2(self, cpuid: Any) -> None:
        """KVM_SET_CPUID2 (x86_64) with a `struct kvm_cpuid2 *` (e.g. from Kvm.supported_cpuid)."""
        ioctl(self.fd, bindings.KVM_SET_CPUID2, cpuid)

    def arm_vcpu_init(self, init: Any) -> None:
        """KVM_ARM_VCPU_INIT (arm64) with a `struct kvm_vcpu_init *` (target and features)."""
        ioctl(self.fd, bindings.KVM_ARM_VCPU_INIT, init)

    def set_device_attr(self, group: int, attr: int, value: int | None = None) -> None:
        """KVM_SET_DEVICE_ATTR on the vCPU (arm64: KVM_ARM_VCPU_PMU_V3_CTRL, timer and PV-time groups). The value
        goes by address as a u64; attributes KVM reads as an int (the PMU's IRQ) read its low half on arm64 (LE)."""
        set_device_attr(self.fd, group, attr, value)

    def mp_state(self) -> int:
        try:
            return int(self.get_struct(bindings.KVM_GET_MP_STATE, "struct kvm_mp_state *").mp_state)
        except OSError as err:
            if err.errno == errno.EINVAL:
                return -1
            raise
