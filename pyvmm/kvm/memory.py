"""Guest RAM: host memory mapped with mmap and registered with KVM, seen through a bounds-checked view.

Every access by guest-physical address goes through `GuestMemory`, which checks that [gpa, gpa + length) lies inside
one region, so a device handling guest-controlled addresses can never touch host memory outside guest RAM.
"""

from __future__ import annotations

import bisect
import mmap
from typing import NoReturn

from pyvmm.errors import GuestMemoryError, HostResourceError


class MemoryRegion:
    def __init__(self, slot: int, guest_phys: int, size: int, mapping: mmap.mmap) -> None:
        self.slot = slot
        self.guest_phys = guest_phys
        self.size = size
        self.mapping = mapping
        self.view = memoryview(mapping)
        self._host_base: int | None = None

    @property
    def host_base(self) -> int:
        """The host virtual address of the mapping (stable for its lifetime), for interfaces that take one."""
        if self._host_base is None:
            from pyvmm.kvm.ioctl import ffi

            buffer = ffi.from_buffer(self.mapping)
            self._host_base = int(ffi.cast("uintptr_t", buffer))
            ffi.release(buffer)
        return self._host_base

    @property
    def end(self) -> int:
        return self.guest_phys + self.size


def allocate(size: int) -> mmap.mmap:
    """Anonymous private memory for guest RAM; MAP_NORESERVE so untouched RAM costs nothing."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    try:
        return mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, OverflowError) as err:
        raise HostResourceError(f"cannot map {size >> 20} MiB of guest memory: {err}") from None


class GuestMemory:
    """The guest-physical address space backed by RAM regions (sorted, non-overlapping)."""

    def __init__(self) -> None:
        self._regions: list[MemoryRegion] = []
        self._starts: list[int] = []

    @property
    def regions(self) -> list[MemoryRegion]:
        return list(self._regions)

    def add(self, region: MemoryRegion) -> None:
        for other in self._regions:
            if region.guest_phys < other.end and other.guest_phys < region.end:
                raise ValueError(f"memory region at {region.guest_phys:#x} overlaps one at {other.guest_phys:#x}")
        index = bisect.bisect(self._starts, region.guest_phys)
        self._regions.insert(index, region)
        self._starts.insert(index, region.guest_phys)

    @property
    def total(self) -> int:
        return sum(r.size for r in self._regions)

    def _locate(self, gpa: int, length: int) -> tuple[MemoryRegion, int]:
        if length < 0 or gpa < 0:
            raise GuestMemoryError(f"invalid guest range {gpa:#x}+{length:#x}")
        index = bisect.bisect(self._starts, gpa) - 1
        if index >= 0:
            region = self._regions[index]
            offset = gpa - region.guest_phys
            if offset + length <= region.size:
                return region, offset
        raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")

    def region_at(self, gpa: int) -> tuple[int, memoryview]:
        """The guest address of the region holding `gpa` and a view of all of it, for a caller that cuts many
        buffers out of one region and checks each buffer's bounds itself (the virtqueue's descriptor walk). The
        view is the caller's own: `close` releasing the region's view does not pull it from under a late worker."""
        region, _ = self._locate(gpa, 0)
        return region.guest_phys, region.view[:]

    # contains/view are on hot paths: the lookup is inlined, not _locate.
    def contains(self, gpa: int, length: int = 1) -> bool:
        if length < 0 or gpa < 0:
            return False
        index = bisect.bisect(self._starts, gpa) - 1
        if index < 0:
            return False
        region = self._regions[index]
        return gpa - region.guest_phys + length <= region.size

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy view of guest RAM, for os.preadv/pwritev and parsing in place."""
        index = bisect.bisect(self._starts, gpa) - 1
        if index >= 0 and length >= 0 and gpa >= 0:
            region = self._regions[index]
            offset = gpa - region.guest_phys
            if offset + length <= region.size:
                return region.view[offset : offset + length]
        return self._raise(gpa, length)

    def _raise(self, gpa: int, length: int) -> NoReturn:
        self._locate(gpa, length)  # raises the error that names the range
        raise AssertionError("unreachable")

    def host_address(self, gpa: int, length: int) -> int:
        """The host virtual address of [gpa, gpa + length), which must lie in one region: for a kernel backend
        (vhost) that reads guest RAM itself. Raises GuestMemoryError outside RAM."""
        region, offset = self._locate(gpa, length)
        return region.host_base + offset

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def read_int(self, gpa: int, size: int) -> int:
        return int.from_bytes(self.view(gpa, size), "little")

    def write_int(self, gpa: int, size: int, value: int) -> None:
        self.view(gpa, size)[:] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def close(self) -> None:
        for region in self._regions:
            region.view.release()
            try:
                region.mapping.close()
            except BufferError:
                # A device worker left busy at teardown (DeviceWorker.close) still holds views: the mapping stays
                # until they are gone (its last reference unmaps it), so what the worker writes lands in memory
                # that is still ours.
                pass
        self._regions.clear()
        self._starts.clear()
