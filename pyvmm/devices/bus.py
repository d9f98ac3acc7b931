"""Address buses: devices claim [base, base + size) and guest accesses are dispatched to them.

One Bus class serves MMIO (both architectures) and port I/O (x86_64). Accesses are handled as (offset within the
device, size in bytes, value as an int). The bus owns the lookup and the exact-address caches that keep the vCPU
loop's hot path to one dict probe; every register/unregister clears them, so a cached entry never outlives the
placement it was computed from.
"""

from __future__ import annotations

import bisect
from typing import Callable, NamedTuple, Protocol

# Bounds on the caches: a guest sweeping addresses must not grow them without limit.
FIND_CACHE_LIMIT = 65536
WRITE_CACHE_LIMIT = 4096


class Device(Protocol):
    """What a bus needs of a device. Values are little-endian integers of `size` bytes."""

    name: str

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusConflictError(ValueError):
    """Two devices claimed overlapping ranges: a bug in the machine description, caught at registration."""


class BusRange(NamedTuple):
    base: int
    size: int
    device: Device

    @property
    def end(self) -> int:
        return self.base + self.size


WriteTarget = tuple[Callable[[int, int, int], None], int]  # (the device's bound write, offset in the device)
ReadTarget = tuple[Callable[[int, int], int], int]  # (the device's bound read, offset in the device)
CACHED_READ_SIZES = (1, 2, 4, 8)  # the sizes the vCPU loop stores with one struct call


class Bus:
    def __init__(self, name: str) -> None:
        self.name = name
        self._ranges: list[BusRange] = []
        self._bases: list[int] = []
        self._found: dict[int, BusRange | None] = {}
        # addr * 16 + size -> WriteTarget, for every write seen (CPython 3.11 specialises * and + on ints, not << and
        # |). The vCPU loop probes this dict itself (a method call per exit costs more than the probe): it must only
        # ever be cleared in place, never replaced.
        self.write_cache: dict[int, WriteTarget] = {}
        self.read_cache: dict[int, ReadTarget] = {}  # the same for reads of CACHED_READ_SIZES

    def register(self, base: int, size: int, device: Device) -> BusRange:
        if size <= 0:
            raise BusConflictError(f"{device.name}: empty range at {base:#x} on the {self.name} bus")
        new = BusRange(base, size, device)
        for other in self._ranges:
            if new.base < other.end and other.base < new.end:
                raise BusConflictError(
                    f"{device.name} at {base:#x}-{new.end - 1:#x} overlaps {other.device.name} at "
                    f"{other.base:#x}-{other.end - 1:#x} on the {self.name} bus"
                )
        index = bisect.bisect(self._bases, base)
        self._ranges.insert(index, new)
        self._bases.insert(index, base)
        self._invalidate()
        return new

    def unregister(self, device: Device) -> None:
        """Remove every range `device` claims (hot-unplug, teardown)."""
        keep = [r for r in self._ranges if r.device is not device]
        self._ranges = keep
        self._bases = [r.base for r in keep]
        self._invalidate()

    def _invalidate(self) -> None:
        self._found.clear()
        self.write_cache.clear()
        self.read_cache.clear()

    @property
    def ranges(self) -> list[BusRange]:
        return list(self._ranges)

    def find(self, addr: int) -> BusRange | None:
        try:
            return self._found[addr]
        except KeyError:
            pass
        index = bisect.bisect(self._bases, addr) - 1
        found = None
        if index >= 0 and addr < self._ranges[index].end:
            found = self._ranges[index]
        if len(self._found) < FIND_CACHE_LIMIT:
            self._found[addr] = found
        return found

    def read(self, addr: int, size: int) -> int | None:
        """Dispatch a read and remember its target in `read_cache` (for CACHED_READ_SIZES; an unclaimed read's too,
        whose target answers all-ones); None when no device claims the whole access (the guest then reads all-ones)."""
        hit = self.find(addr)
        target = (hit.device.read, addr - hit.base) if hit is not None and addr + size <= hit.end else _ALL_ONES
        if size in CACHED_READ_SIZES and len(self.read_cache) < WRITE_CACHE_LIMIT:
            self.read_cache[addr * 16 + size] = target
        return None if target is _ALL_ONES else target[0](target[1], size)

    def write(self, addr: int, size: int, value: int) -> bool:
        """Dispatch a write and remember its target in `write_cache`, an unclaimed one's too (it drops the value: the
        vCPU loop looks the cache up by subscript, and a miss there costs an exception); False when no device claims
        the whole access."""
        hit = self.find(addr)
        target = (hit.device.write, addr - hit.base) if hit is not None and addr + size <= hit.end else _DROP
        if len(self.write_cache) < WRITE_CACHE_LIMIT:
            self.write_cache[addr * 16 + size] = target
        target[0](target[1], size, value)
        return target is not _DROP


def _drop(offset: int, size: int, value: int) -> None:
    """The target of an unclaimed write."""


def _all_ones(offset: int, size: int) -> int:
    """The target of an unclaimed read."""
    return (1 << (8 * size)) - 1


_DROP: WriteTarget = (_drop, 0)
_ALL_ONES: ReadTarget = (_all_ones, 0)
