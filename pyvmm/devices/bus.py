"""Address buses: devices claim [base, base + size) and the run loop dispatches guest accesses to them.

Accesses are handled as (offset within the device, size in bytes, value as an int). A lookup cache keyed by the
exact address keeps the hot path to one dict probe; it is filled on first use and cleared on registration.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol


class Device(Protocol):
    """What a bus needs of a device. Values are little-endian integers of `size` bytes."""

    name: str

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusConflictError(ValueError):
    """Two devices claimed overlapping ranges: a bug in the machine description, caught at registration."""


@dataclass(frozen=True)
class BusRange:
    base: int
    size: int
    device: Device

    @property
    def end(self) -> int:
        return self.base + self.size


class Bus:
    def __init__(self, name: str) -> None:
        self.name = name
        self._ranges: list[BusRange] = []
        self._bases: list[int] = []
        self._cache: dict[int, BusRange | None] = {}

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
        self._cache.clear()
        return new

    @property
    def ranges(self) -> list[BusRange]:
        return list(self._ranges)

    def find(self, addr: int) -> BusRange | None:
        try:
            return self._cache[addr]
        except KeyError:
            pass
        index = bisect.bisect(self._bases, addr) - 1
        found = None
        if index >= 0 and addr < self._ranges[index].end:
            found = self._ranges[index]
        if len(self._cache) < 65536:  # a guest sweeping addresses must not grow this without bound
            self._cache[addr] = found
        return found

    def read(self, addr: int, size: int) -> int | None:
        """Dispatch a read; None when no device claims the whole access."""
        hit = self.find(addr)
        if hit is None or addr + size > hit.end:
            return None
        return hit.device.read(addr - hit.base, size)

    def write(self, addr: int, size: int, value: int) -> bool:
        """Dispatch a write; False when no device claims the whole access."""
        hit = self.find(addr)
        if hit is None or addr + size > hit.end:
            return False
        hit.device.write(addr - hit.base, size, value)
        return True
