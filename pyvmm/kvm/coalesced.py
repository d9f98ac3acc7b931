"""KVM's coalesced MMIO ring: writes to a registered zone (KVM_REGISTER_COALESCED_MMIO, or port I/O with zone.pio)
are appended to one page shared by the whole VM instead of exiting to userspace; when the ring is full KVM exits
as usual. The page sits at page KVM_CAP_COALESCED_MMIO (the capability's value) of any vCPU fd's mmap.

Layout (include/uapi/linux/kvm.h): struct kvm_coalesced_mmio_ring {u32 first, last; struct kvm_coalesced_mmio
{u64 phys_addr; u32 len; u32 pio; u8 data[8];} coalesced_mmio[];}. KVM writes entry `last` and then advances
`last`; the consumer reads entries from `first` up to `last` and then advances `first`. Both indices are below the
ring's size, (page size - 8) / 24 entries, and KVM keeps one entry free, so first == last means empty.
"""

from __future__ import annotations

import mmap
import struct
import threading
from typing import Any

HEADER = struct.Struct("<II")  # first, last
ENTRY = struct.Struct("<QII8s")  # phys_addr, len, pio, data
MAX_LEN = 8  # bytes of data an entry holds

#: One queued write: (guest-physical address or port, length in bytes, 1 for port I/O else 0, value little-endian).
Entry = tuple[int, int, int, int]


def ring_entries(page_size: int) -> int:
    """KVM_COALESCED_MMIO_MAX for a page size."""
    return (page_size - HEADER.size) // ENTRY.size


class CoalescedRing:
    """The consumer side of the ring. `take()` is thread-safe; it works on any writable buffer of a page's size, so
    tests need no /dev/kvm. The indices are read defensively: only KVM writes `last`, but the page is shared memory
    and a bad index must never make pyvmm read past the page or loop without end."""

    def __init__(self, buffer: Any, page_size: int = mmap.PAGESIZE) -> None:
        self.buffer = buffer
        self.size = ring_entries(page_size)
        self._lock = threading.Lock()
        self._mapping: mmap.mmap | None = None
        self.dropped = 0  # entries discarded for a bad length (KVM never writes one)

    @classmethod
    def map(cls, vcpu_fd: int, page_offset: int, mmap_size: int) -> "CoalescedRing":
        """Map the ring's page of a vCPU fd (`page_offset`: KVM_CHECK_EXTENSION(KVM_CAP_COALESCED_MMIO)); one
        mapping serves every vCPU, the ring being the VM's. Raises OSError or ValueError for an offset past the
        vCPU's mmap (`mmap_size`, KVM_GET_VCPU_MMAP_SIZE)."""
        page = mmap.PAGESIZE
        if not 0 < page_offset or (page_offset + 1) * page > mmap_size:
            raise ValueError(f"coalesced MMIO page {page_offset} is outside the vCPU mmap ({mmap_size} bytes)")
        mapping = mmap.mmap(vcpu_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                            offset=page_offset * page)
        ring = cls(mapping, page)
        ring._mapping = mapping
        return ring

    def take(self) -> list[Entry]:
        """Every queued write, oldest first, and free their entries. At most one ring's worth per call."""
        buffer = self.buffer
        first, last = HEADER.unpack_from(buffer, 0)
        if first == last:
            return []  # the common case, without the lock (the UART asks before each of its register accesses)
        with self._lock:
            first, last = HEADER.unpack_from(buffer, 0)
            if first == last:
                return []
            size = self.size
            if last >= size:
                return []  # KVM itself then queues nothing more (it checks `last` too): writes exit as usual
            if first >= size:
                # Only the consumer writes `first`: this page was tampered with. Skip what cannot be located.
                HEADER.pack_into(buffer, 0, last, last)
                return []
            # Python executes thousands of instructions between KVM's `last` store becoming visible here and these
            # loads, and between them and the store of `first` below: like kvmtool, no explicit barrier.
            entries: list[Entry] = []
            at = first
            while at != last:  # fewer than `size` steps: both indices are below it
                phys_addr, length, pio, data = ENTRY.unpack_from(buffer, HEADER.size + at * ENTRY.size)
                if 0 < length <= MAX_LEN:
                    entries.append((phys_addr, length, pio, int.from_bytes(data[:length], "little")))
                else:
                    self.dropped += 1
                at = (at + 1) % size
            struct.pack_into("<I", buffer, 0, last)  # first = last: the entries are KVM's again
            return entries

    def close(self) -> None:
        """Unmap the page; the ring then reads as empty (a vCPU still leaving KVM_RUN may ask once more)."""
        with self._lock:
            self.buffer = bytearray(HEADER.size)
            mapping, self._mapping = self._mapping, None
        if mapping is not None:
            mapping.close()
