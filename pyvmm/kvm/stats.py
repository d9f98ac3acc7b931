"""Reader for KVM's binary statistics file descriptor (KVM_GET_STATS_FD).

Layout (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD"; include/uapi/linux/kvm.h):

* header, 6 x u32: flags, name_size, num_desc, id_offset, desc_offset, data_offset;
* an id string of name_size bytes at id_offset ("kvm-PID" or "kvm-PID/vcpu-N");
* num_desc descriptors at desc_offset, each 16 + name_size bytes:
  {u32 flags, s16 exponent, u16 size, u32 offset, u32 bucket_size, char name[name_size]};
* the data block at data_offset: each stat is `size` u64 values at data_offset + offset.

Header, id and descriptors never change for the life of the fd, so they are parsed once
(`StatsLayout`); afterwards one `os.pread` of the data block per snapshot is all that is
needed, which keeps sampling cheap enough to do every few milliseconds.

Everything is parsed with explicit bounds checks: a truncated or inconsistent blob raises
`StatsFormatError` with what is wrong, never an IndexError or struct.error.
"""

from __future__ import annotations

import enum
import math
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

__all__ = [
    "StatsFormatError",
    "StatType",
    "StatUnit",
    "StatBase",
    "StatDescriptor",
    "Histogram",
    "StatsLayout",
    "StatsSnapshot",
    "StatsReader",
    "parse_layout",
    "parse_blob",
    "read_whole_fd",
    "rates",
    "deltas",
]

_HEADER = struct.Struct("<6I")  # flags, name_size, num_desc, id_offset, desc_offset, data_offset
_DESC = struct.Struct("<IhHII")  # flags, exponent, size, offset, bucket_size (16 bytes)
# Sanity limits: well above anything KVM emits (name_size is 48, a few dozen stats), low
# enough that a corrupt header cannot make us allocate gigabytes.
_MAX_NAME_SIZE = 4096
_MAX_DESC = 65536


class StatsFormatError(ValueError):
    """The stats blob is truncated or inconsistent (the message says which part)."""


class StatType(enum.IntEnum):
    """KVM_STATS_TYPE_* (flags bits 0-3)."""

    CUMULATIVE = 0  # monotonically increasing counter: rates make sense
    INSTANT = 1  # current value (e.g. pages mapped)
    PEAK = 2  # high-water mark
    LINEAR_HIST = 3  # buckets of bucket_size each
    LOG_HIST = 4  # bucket 0 = value 0, bucket i = [2^(i-1), 2^i)


class StatUnit(enum.IntEnum):
    """KVM_STATS_UNIT_* (flags bits 4-7)."""

    NONE = 0
    BYTES = 1
    SECONDS = 2
    CYCLES = 3
    BOOLEAN = 4


class StatBase(enum.IntEnum):
    """KVM_STATS_BASE_* (flags bits 8-11): the base the exponent applies to."""

    POW10 = 0
    POW2 = 1


def _enum_or_none(cls: type[enum.IntEnum], value: int) -> enum.IntEnum | None:
    # Newer kernels may add types/units; an unknown code must not make the whole fd unreadable,
    # so such a stat is kept with its raw values only.
    try:
        return cls(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Histogram:
    """A histogram stat: `counts[i]` events fell in [lower[i], upper[i]) (natural units).

    upper of the last bucket is math.inf: KVM clamps larger values into it.
    """

    counts: tuple[int, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[float, float, int]]:
        """(lower, upper, count) triples, convenient for printing and plotting."""
        return list(zip(self.lower, self.upper, self.counts))


@dataclass(frozen=True)
class StatDescriptor:
    """One decoded kvm_stats_desc. `offset` is relative to the data block."""

    name: str
    flags: int
    exponent: int
    size: int
    offset: int
    bucket_size: int

    @property
    def type(self) -> StatType | None:
        return _enum_or_none(StatType, self.flags & 0xF)  # type: ignore[return-value]

    @property
    def unit(self) -> StatUnit | None:
        return _enum_or_none(StatUnit, (self.flags >> 4) & 0xF)  # type: ignore[return-value]

    @property
    def base(self) -> StatBase | None:
        return _enum_or_none(StatBase, (self.flags >> 8) & 0xF)  # type: ignore[return-value]

    @property
    def is_histogram(self) -> bool:
        return self.type in (StatType.LINEAR_HIST, StatType.LOG_HIST)

    @property
    def scale(self) -> float:
        """Factor from a raw integer to natural units (seconds, bytes, ...): base ** exponent."""
        base = 2 if self.base is StatBase.POW2 else 10
        return float(base) ** self.exponent

    def natural(self, raw: int) -> int | float | bool:
        """One raw u64 in natural units: halt_wait_ns (exponent -9) -> seconds.

        Unit-less counts with exponent 0 stay exact ints; a BOOLEAN becomes a bool.
        """
        if self.unit is StatUnit.BOOLEAN:
            return bool(raw)
        if self.exponent == 0:
            return raw
        if self.exponent > 0:
            base = 2 if self.base is StatBase.POW2 else 10
            return raw * base**self.exponent  # exact for e.g. pages -> bytes
        return raw * self.scale

    def named_value(self, raw: int) -> int | float | bool:
        """The value in the unit its name says, for JSON readers: a time stat named *_ns in integer nanoseconds
        (halt_wait_ns holds ns, not the seconds `natural` gives), anything else in natural units."""
        if self.unit is StatUnit.SECONDS and self.name.endswith("_ns"):
            if self.base is StatBase.POW10 and self.exponent == -9:
                return raw  # what KVM reports: exact
            return round(raw * self.scale * 1e9)
        return self.natural(raw)

    def bucket_bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Lower and upper bounds of each bucket in natural units (histograms only)."""
        n = self.size
        if self.type is StatType.LINEAR_HIST:
            lo = [float(i * self.bucket_size) for i in range(n)]
            hi = [float((i + 1) * self.bucket_size) for i in range(n)]
        elif self.type is StatType.LOG_HIST:
            # kvm_stats_log_hist_update(): index = fls64(value), clamped to size - 1.
            lo = [0.0] + [float(2 ** (i - 1)) for i in range(1, n)]
            hi = [1.0] + [float(2**i) for i in range(1, n)]
        else:
            raise ValueError(f"stat {self.name!r} is not a histogram")
        if n:
            hi[-1] = math.inf
        s = self.scale
        return tuple(x * s for x in lo), tuple(x * s for x in hi)


@dataclass(frozen=True)
class StatsLayout:
    """Header + id + descriptors: constant for the life of a stats fd."""

    flags: int
    name_size: int
    id: str
    id_offset: int
    desc_offset: int
    data_offset: int
    descriptors: tuple[StatDescriptor, ...]
    by_name: Mapping[str, StatDescriptor] = field(repr=False, compare=False)

    @property
    def data_size(self) -> int:
        """Bytes of the data block that cover every descriptor."""
        return max((d.offset + 8 * d.size for d in self.descriptors), default=0)

    def names(self) -> list[str]:
        return [d.name for d in self.descriptors]

    def decode_data(self, data: bytes) -> dict[str, tuple[int, ...]]:
        """Raw u64 values of every stat from the data block."""
        if len(data) < self.data_size:
            raise StatsFormatError(
                f"stats data block truncated: {len(data)} bytes, descriptors need {self.data_size}"
            )
        out: dict[str, tuple[int, ...]] = {}
        for d in self.descriptors:
            out[d.name] = struct.unpack_from(f"<{d.size}Q", data, d.offset)
        return out


def _cstring(blob: bytes, start: int, size: int, what: str) -> str:
    raw = blob[start : start + size]
    nul = raw.find(b"\0")
    if nul < 0:
        raise StatsFormatError(f"{what} at offset {start} is not NUL-terminated within {size} bytes")
    try:
        return raw[:nul].decode("ascii")
    except UnicodeDecodeError:
        raise StatsFormatError(f"{what} at offset {start} is not ASCII: {raw[:nul]!r}") from None


def parse_layout(blob: bytes) -> StatsLayout:
    """Parse header, id string and descriptors from the start of a stats fd.

    `blob` must hold at least everything up to the end of the descriptor block (the data
    block is not needed). Raises StatsFormatError when anything is truncated or inconsistent.
    """
    if len(blob) < _HEADER.size:
        raise StatsFormatError(f"stats header truncated: {len(blob)} bytes, need {_HEADER.size}")
    flags, name_size, num_desc, id_off, desc_off, data_off = _HEADER.unpack_from(blob, 0)
    if not 0 < name_size <= _MAX_NAME_SIZE:
        raise StatsFormatError(f"stats header name_size {name_size} out of range 1..{_MAX_NAME_SIZE}")
    if num_desc > _MAX_DESC:
        raise StatsFormatError(f"stats header num_desc {num_desc} exceeds {_MAX_DESC}")
    for label, off in (("id_offset", id_off), ("desc_offset", desc_off), ("data_offset", data_off)):
        if off < _HEADER.size:
            raise StatsFormatError(f"stats header {label} {off} overlaps the {_HEADER.size}-byte header")
    if id_off + name_size > len(blob):
        raise StatsFormatError(
            f"stats id string truncated: needs bytes {id_off}..{id_off + name_size}, blob has {len(blob)}"
        )
    ident = _cstring(blob, id_off, name_size, "stats id string")
    stride = _DESC.size + name_size
    desc_end = desc_off + num_desc * stride
    if desc_end > len(blob):
        raise StatsFormatError(
            f"stats descriptors truncated: {num_desc} x {stride} bytes from {desc_off} end at "
            f"{desc_end}, blob has {len(blob)}"
        )
    descs: list[StatDescriptor] = []
    by_name: dict[str, StatDescriptor] = {}
    for i in range(num_desc):
        base = desc_off + i * stride
        dflags, exponent, size, offset, bucket_size = _DESC.unpack_from(blob, base)
        name = _cstring(blob, base + _DESC.size, name_size, f"name of stats descriptor {i}")
        if not name:
            raise StatsFormatError(f"stats descriptor {i} has an empty name")
        if name in by_name:
            raise StatsFormatError(f"stats descriptor {i} repeats the name {name!r}")
        d = StatDescriptor(name, dflags, exponent, size, offset, bucket_size)
        if d.type is StatType.LINEAR_HIST and bucket_size == 0:
            raise StatsFormatError(f"linear histogram {name!r} has bucket_size 0")
        descs.append(d)
        by_name[name] = d
    return StatsLayout(flags, name_size, ident, id_off, desc_off, data_off, tuple(descs), by_name)


@dataclass(frozen=True)
class StatsSnapshot:
    """Raw values of every stat at one moment, with when they were read.

    `monotonic_ns` (time.monotonic_ns, midpoint of the read) is what rates use;
    `wall_time` (time.time) is for logs.
    """

    layout: StatsLayout = field(repr=False)
    raw: Mapping[str, tuple[int, ...]]
    monotonic_ns: int
    wall_time: float

    @property
    def id(self) -> str:
        return self.layout.id

    def __contains__(self, name: object) -> bool:
        return name in self.raw

    def raw_value(self, name: str) -> int:
        """The raw integer of a scalar stat."""
        vals = self._get(name)
        if len(vals) != 1:
            raise ValueError(f"stat {name!r} has {len(vals)} values; use histogram() or raw[...]")
        return vals[0]

    def value(self, name: str) -> int | float | bool | Histogram:
        """A stat in natural units (seconds, bytes, ...); histograms as Histogram."""
        d = self._desc(name)
        if d.is_histogram:
            return self.histogram(name)
        vals = self._get(name)
        if len(vals) == 1:
            return d.natural(vals[0])
        return tuple(d.natural(v) for v in vals)  # type: ignore[return-value]

    def histogram(self, name: str) -> Histogram:
        d = self._desc(name)
        lo, hi = d.bucket_bounds()
        return Histogram(tuple(self._get(name)), lo, hi)

    def values(self) -> dict[str, int | float | bool | Histogram]:
        return {n: self.value(n) for n in self.raw}

    def _desc(self, name: str) -> StatDescriptor:
        try:
            return self.layout.by_name[name]
        except KeyError:
            raise KeyError(f"no stat named {name!r} in {self.layout.id!r}") from None

    def _get(self, name: str) -> tuple[int, ...]:
        self._desc(name)
        return self.raw[name]


def parse_blob(blob: bytes, *, monotonic_ns: int = 0, wall_time: float = 0.0) -> StatsSnapshot:
    """Parse a whole stats-fd dump (header to end of data), e.g. a recorded test file."""
    layout = parse_layout(blob)
    data = blob[layout.data_offset : layout.data_offset + layout.data_size]
    return StatsSnapshot(layout, layout.decode_data(data), monotonic_ns, wall_time)


def read_whole_fd(fd: int, chunk: int = 65536) -> bytes:
    """Everything a stats fd holds, from offset 0 to EOF (for recording and debugging)."""
    parts: list[bytes] = []
    off = 0
    while True:
        b = os.pread(fd, chunk, off)
        if not b:
            return b"".join(parts)
        parts.append(b)
        off += len(b)


class StatsReader:
    """Parses a stats fd's layout once, then snapshots it with one pread per call.

    The reader does not own `fd` unless `owns_fd` is true (then close() closes it); it is a
    context manager either way.
    """

    def __init__(self, fd: int, *, owns_fd: bool = False) -> None:
        self.fd = fd
        self._owns = owns_fd
        head = os.pread(fd, _HEADER.size, 0)
        if len(head) < _HEADER.size:
            raise StatsFormatError(f"stats header truncated: {len(head)} bytes, need {_HEADER.size}")
        _, name_size, num_desc, id_off, desc_off, _ = _HEADER.unpack(head)
        # Read just far enough to cover the id and descriptors (bounded by parse_layout's limits).
        end = max(id_off + min(name_size, _MAX_NAME_SIZE),
                  desc_off + min(num_desc, _MAX_DESC) * (_DESC.size + min(name_size, _MAX_NAME_SIZE)))
        meta = os.pread(fd, end, 0)
        self.layout = parse_layout(meta)
        self._size = self.layout.data_size

    @classmethod
    def from_object(cls, obj: object) -> "StatsReader":
        """A reader on a fresh stats fd of a VM or vCPU object offering stats_fd()."""
        return cls(obj.stats_fd(), owns_fd=True)  # type: ignore[attr-defined]

    def snapshot(self) -> StatsSnapshot:
        t0 = time.monotonic_ns()
        data = os.pread(self.fd, self._size, self.layout.data_offset)
        t1 = time.monotonic_ns()
        return StatsSnapshot(self.layout, self.layout.decode_data(data), (t0 + t1) // 2, time.time())

    def close(self) -> None:
        if self._owns and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "StatsReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_pair(before: StatsSnapshot, after: StatsSnapshot) -> float:
    if before.layout.id != after.layout.id:
        raise ValueError(f"snapshots of different objects: {before.id!r} vs {after.id!r}")
    dt = (after.monotonic_ns - before.monotonic_ns) / 1e9
    if dt <= 0:
        raise ValueError(f"snapshot interval must be positive, got {dt:.9f} s")
    return dt


def deltas(before: StatsSnapshot, after: StatsSnapshot,
           names: Iterable[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Raw element-wise differences of cumulative stats and histograms (KVM's histograms
    only grow too), e.g. how many halt waits fell in each bucket during an interval."""
    _check_pair(before, after)
    out: dict[str, tuple[int, ...]] = {}
    for d in after.layout.descriptors:
        if names is not None and d.name not in names:
            continue
        if d.type in (StatType.CUMULATIVE, StatType.LINEAR_HIST, StatType.LOG_HIST):
            out[d.name] = tuple(a - b for a, b in zip(after.raw[d.name], before.raw[d.name]))
    return out


def rates(before: StatsSnapshot, after: StatsSnapshot,
          names: Iterable[str] | None = None) -> dict[str, float]:
    """Per-second rates of scalar cumulative stats, in natural units per second.

    wfi_exit_stat -> exits/s; halt_wait_ns -> seconds waited per second (a 0..1 fraction
    for one vCPU). Instant/peak stats and histograms are left out: a rate of them means nothing.
    """
    dt = _check_pair(before, after)
    wanted = set(names) if names is not None else None
    out: dict[str, float] = {}
    for d in after.layout.descriptors:
        if wanted is not None and d.name not in wanted:
            continue
        if d.type is StatType.CUMULATIVE and d.size == 1:
            diff = after.raw[d.name][0] - before.raw[d.name][0]
            out[d.name] = diff * d.scale / dt
    if wanted is not None:
        missing = wanted - out.keys()
        if missing:
            raise KeyError(f"not scalar cumulative stats of {after.id!r}: {', '.join(sorted(missing))}")
    return out
