"""Split virtqueues (virtio 1.2, 2.7) read and written through a bounds-checked guest memory view.

Everything in a ring is guest-controlled, so every step is checked: ring addresses and sizes when the queue is made
ready, the available index against the queue size, each head and `next` index against the queue size, every
buffer's [addr, addr + len) against the RAM region it must lie in whole (`GuestMemory.region_at`; a buffer or table
outside RAM or across two regions is refused), after which the chain carries it as a memoryview of that region, so
a device does no look-up of its own (and cannot reach outside what was checked); chains bounded by
the queue's maximum size, indirect tables included (so one chain costs at most that many descriptors), nested
indirect tables and readable-after-writable buffers refused. The three ring areas are checked once when the queue
is made ready and then accessed through views of guest RAM cast to their 16/32-bit fields (they cannot move while
the queue is ready); chains are taken and returned in batches (one index load per batch, one used-index store).
Any violation raises `VirtqueueError`, the one error a device sees; the transport answers it with
DEVICE_NEEDS_RESET for that device only.

Memory ordering: the guest reads the used ring on another CPU, so the used element must be visible before the used
index. CPython cannot emit a barrier itself; a fence here releases and re-acquires a lock that is otherwise always
held (`_fence_release()` then `_fence_acquire()`, two C calls inline: every request passes four fences), i.e. a
store-release followed by a load-acquire (STLR/LDAR or CASL/CASA on arm64), which ARMv8 orders like a full barrier
(RCsc).
"""

from __future__ import annotations

import functools
import struct
import sys
import threading
from operator import sub
from typing import Iterable, Protocol

from pyvmm.devices.virtio.constants import (
    AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
)
from pyvmm.errors import GuestMemoryError

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
# Indirect tables of this many descriptors or more are first tried whole (`Virtqueue._straight`): that costs more
# up front than walking a dozen descriptors one by one, then about half as much per descriptor (callgrind).
STRAIGHT_MIN = 16
USED_ELEM = struct.Struct("<II")


class Memory(Protocol):
    """What a virtqueue needs of guest memory (pyvmm.kvm.memory.GuestMemory, or a test model)."""

    def view(self, gpa: int, length: int) -> memoryview: ...

    def region_at(self, gpa: int) -> tuple[int, memoryview]: ...

    def read_int(self, gpa: int, size: int) -> int: ...

    def write_int(self, gpa: int, size: int, value: int) -> None: ...


class VirtqueueError(Exception):
    """The driver put something malformed in a queue: the device must stop and ask for a reset."""


class Chain:
    """One descriptor chain: the head index to return, and its device-readable then device-writable buffers as
    views of guest RAM (each checked against RAM when the chain was taken: a device does no address look-up)."""

    __slots__ = ("head", "readable", "writable", "epoch", "lengths")

    def __init__(self, head: int, readable: list[memoryview], writable: list[memoryview], epoch: int = 0,
                 lengths: tuple[int, int] | None = None) -> None:
        self.head = head
        self.readable = readable
        self.writable = writable
        self.epoch = epoch  # the queue's epoch when taken: a chain from a ring since disabled is never returned
        self.lengths = lengths  # (readable_len, writable_len) when the walk had them at hand, else None

    @property
    def readable_len(self) -> int:
        lengths = self.lengths
        return sum(map(len, self.readable)) if lengths is None else lengths[0]

    @property
    def writable_len(self) -> int:
        lengths = self.lengths
        return sum(map(len, self.writable)) if lengths is None else lengths[1]


def read_from(buffers: list[memoryview], limit: int) -> bytes:
    """Up to `limit` bytes gathered from the buffers, in order."""
    out = bytearray()
    for buffer in buffers:
        if len(out) >= limit:
            break
        out += buffer[: limit - len(out)]
    return bytes(out)


def views(buffers: list[memoryview], skip: int = 0, limit: int | None = None) -> list[memoryview]:
    """The buffers without their first `skip` bytes, at most `limit` bytes (views, no copies)."""
    out: list[memoryview] = []
    remaining = limit
    for buffer in buffers:
        length = len(buffer)
        if skip >= length:
            skip -= length
            continue
        take = length - skip
        if remaining is not None:
            take = min(take, remaining)
            remaining -= take
        if take > 0:
            out.append(buffer[skip : skip + take])
        skip = 0
        if remaining == 0:
            break
    return out


def write_to(buffers: list[memoryview], data: bytes | memoryview, skip: int = 0) -> int:
    """Scatter `data` into the buffers from byte `skip`; returns how many bytes fitted."""
    done = 0
    for view in views(buffers, skip, len(data)):
        view[:] = data[done : done + len(view)]
        done += len(view)
    return done


class Virtqueue:
    """The device side of one split virtqueue. Not thread-safe: the transport serialises access with its lock."""

    def __init__(self, memory: Memory, max_size: int) -> None:
        self.memory = memory
        self.max_size = max_size
        fence = threading.Lock()
        fence.acquire()  # held: a fence is its release and re-acquisition
        self._fence_release, self._fence_acquire = fence.release, fence.acquire
        self.epoch = 0
        self.reset()

    def reset(self) -> None:
        self.disable()
        self.size = self.max_size
        self.desc = 0
        self.avail = 0
        self.used = 0
        self.event_idx = False
        self.indirect = False
        self.last_avail = 0
        self.used_idx = 0
        self.signalled_used = 0  # used index at the last interrupt (EVENT_IDX suppression)
        self._descs = self._avail = self._used_head = self._used_ring = _EMPTY  # views of the rings when ready
        self._avail_event: memoryview | None = None
        self._ram = _NO_REGION  # (guest address, view) of the RAM region the last buffer was in
        self._unchecked = False  # the last avail_event store has not been followed by a look at the index

    def disable(self) -> None:
        """QueueReady = 0 or a reset: chains taken from this ring so far must not come back into it (the driver
        may resize or move it before enabling it again)."""
        self.ready = False
        self.epoch += 1

    # -- configuration ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the ring layout the driver wrote before the queue is made ready."""
        size = self.size
        if not 1 <= size <= self.max_size or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two in 1..{self.max_size}")
        extra = 2 if self.event_idx else 0
        for name, addr, length, align in (("descriptor table", self.desc, 16 * size, 16),
                                          ("driver area", self.avail, 4 + 2 * size + extra, 2),
                                          ("device area", self.used, 4 + 8 * size + extra, 4)):
            if addr % align:
                raise VirtqueueError(f"{name} at {addr:#x} is not {align}-byte aligned")
            try:
                self.memory.view(addr, length)
            except GuestMemoryError as err:
                raise VirtqueueError(f"{name}: {err}") from None
        # The rings cannot move while the queue is ready: checked once here, then read and written through
        # views cast to the ring's little-endian fields (no range look-up per access on the request path).
        memory = self.memory
        self._descs = memory.view(self.desc, 16 * size)
        self._avail = _le(memory.view(self.avail, 4 + 2 * size + extra), "H")  # flags, idx, ring[size], used_event
        self._used_head = _le(memory.view(self.used, 4), "H")  # flags, idx
        self._used_ring = _le(memory.view(self.used + 4, 8 * size), "I")  # (id, len) * size
        self._avail_event = _le(memory.view(self.used + 4 + 8 * size, 2), "H") if self.event_idx else None
        # A freshly enabled queue starts from the indices the rings hold (zero after a driver reset).
        self.last_avail = self._avail[1]
        self.used_idx = self._used_head[1]
        self.signalled_used = self.used_idx

    # -- the available ring -------------------------------------------------------------------------------------
    def pop(self) -> Chain | None:
        """The next available chain, validated; None when the ring is empty."""
        chains = self.take(1)
        return chains[0] if chains else None

    def take(self, limit: int) -> list[Chain]:
        """Up to `limit` available chains, validated. Fewer than `limit` means the ring was empty at the last look:
        with EVENT_IDX that look came after the avail_event store, so the driver kicks for anything it adds later
        (without EVENT_IDX it always kicks: this device never sets NO_NOTIFY)."""
        chains: list[Chain] = []
        if not self.ready:
            return chains
        ring, size, walk = self._avail, self.size, self._walk
        release, acquire = self._fence_release, self._fence_acquire
        stored = self._unchecked  # an earlier take stopped at its limit right after its avail_event store
        while len(chains) < limit:
            if stored:
                release()  # fence: our avail_event store before this load, else a chain added meanwhile could
                acquire()  # go unkicked
            avail_idx = ring[1]
            count = (avail_idx - self.last_avail) & 0xFFFF
            if count > size:
                raise VirtqueueError(f"available index {avail_idx} is {count} ahead of the device: over the queue "
                                     f"size {size}")
            if count == 0:
                break
            release()  # fence: the ring entries must be read after the index that published them
            acquire()
            last = self.last_avail
            room = limit - len(chains)
            for _ in range(count if count < room else room):  # not min(): its keyword parsing costs more
                chains.append(walk(ring[2 + last % size]))
                last = (last + 1) & 0xFFFF
                self.last_avail = last
            if self._avail_event is not None:
                self._avail_event[0] = last  # avail_event: notify me when you add past what I took
                stored = True
        self._unchecked = stored and len(chains) == limit  # else the loop's last look came after the store
        return chains

    def _walk(self, head: int) -> Chain:
        # Hot path (one pass per request): one view per descriptor table; each buffer is cut out of the view of the
        # RAM region the previous one was in after a bounds check here (a slice would silently come out short),
        # and the region is looked up only when a buffer is outside it. The device gets these views as they are.
        if head >= self.size:
            raise VirtqueueError(f"head index {head} is outside the queue of {self.size}")
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        base, ram = self._ram
        end = len(ram)
        unpack = DESC.unpack_from
        table_size, index = self.size, head
        table = self._descs
        seen = 0
        # The spec bounds a chain, indirect tables included, by the queue size (2.7.5.3.1); holding to it bounds
        # what one notification costs the device (a 32768-entry indirect table per head would be 8 M descriptors).
        budget = self.max_size
        in_indirect = False
        while True:
            seen += 1
            budget -= 1
            if seen > table_size:
                raise VirtqueueError(f"descriptor chain from head {head} is longer than its table ({table_size}): "
                                     f"a loop")
            if budget < 0:
                raise VirtqueueError(f"descriptor chain from head {head} has more than {self.max_size} descriptors, "
                                     f"the queue size")
            addr, length, flags, nxt = unpack(table, 16 * index)
            if flags & DESC_F_INDIRECT:
                if in_indirect:
                    raise VirtqueueError("an indirect table points to another indirect table")
                if not self.indirect:
                    raise VirtqueueError("indirect descriptor used without VIRTIO_F_RING_INDIRECT_DESC")
                if flags & DESC_F_NEXT:
                    raise VirtqueueError("a descriptor has both INDIRECT and NEXT")
                if length == 0 or length % 16 or length // 16 > self.max_size:
                    raise VirtqueueError(f"indirect table length {length} is not a multiple of 16 in "
                                         f"16..{16 * self.max_size} (a chain is at most the queue size)")
                budget += 1  # the descriptor pointing at the table is not part of the chain
                table_size, index, seen, in_indirect = length // 16, 0, 0, True
                start = addr - base
                if start < 0 or start + length > end:
                    base, ram = self._region(addr, length, "indirect table")
                    end, start = len(ram), addr - base
                table = ram[start : start + length]
                if table_size >= STRAIGHT_MIN and not (readable or writable):  # see _straight
                    chain = self._straight(head, table, table_size, base, ram)
                    if chain is not None:
                        return chain
                continue
            start = addr - base
            if start < 0 or start + length > end:
                base, ram = self._region(addr, length, f"descriptor {index}: buffer")
                end, start = len(ram), addr - base
            buffer = ram[start : start + length]
            if flags & DESC_F_WRITE:
                writable.append(buffer)
            elif writable:
                raise VirtqueueError("a device-readable buffer follows a device-writable one")
            else:
                readable.append(buffer)
            if not flags & DESC_F_NEXT:
                return Chain(head, readable, writable, self.epoch)
            if nxt >= table_size:
                raise VirtqueueError(f"next index {nxt} is outside its table of {table_size}")
            index = nxt

    def _straight(self, head: int, table: memoryview, count: int, base: int, ram: memoryview) -> Chain | None:
        """The chain of an indirect table when it is a straight one, as Linux writes them: descriptor i's next is
        i + 1, the last has no NEXT, only NEXT/WRITE flags, readable buffers before writable ones, every buffer in
        `ram` (the region at `base`); None otherwise, and then the general walk (same checks, one descriptor at a
        time) decides. What is accepted here the walk would accept, with the same views; the per-descriptor steps
        run in C (compares of raw bytes, tolist, map) instead of some twenty bytecodes each."""
        links = _links(count)
        words = table.cast("I")  # per descriptor: addr (low, high), len, flags | next << 16
        flags = table.cast("H")[6::8].tobytes()
        first_write = flags.find(3)  # NEXT | WRITE's low byte: where the device-writable buffers start, if at all
        first_write = count - 1 if first_write < 0 else first_write >> 1
        if words[3:-4:4].tobytes() != links[0][: 4 * first_write] + links[1][4 * first_write :]:
            return None
        last = flags[-2:]
        if last == b"\x02\x00":
            readable = first_write
        elif last == b"\x00\x00" and first_write == count - 1:
            readable = count
        else:
            return None
        lengths = words[2::4].tolist()
        starts = list(map(sub, table.cast("Q")[::2].tolist(), [base] * count))
        if min(starts) < 0 or max(starts) + max(lengths) > len(ram):  # enough for each to be inside `ram`
            return None
        buffers = [ram[start : start + length] for start, length in zip(starts, lengths)]
        return Chain(head, buffers[:readable], buffers[readable:], self.epoch,
                     (sum(lengths[:readable]), sum(lengths[readable:])))

    def _region(self, addr: int, length: int, what: str) -> tuple[int, memoryview]:
        """The region holding all of [addr, addr + length) (kept for the next buffers), else VirtqueueError."""
        try:
            base, ram = self.memory.region_at(addr)
        except GuestMemoryError:
            base, ram = _NO_REGION
        if not (0 <= addr - base and addr - base + length <= len(ram)):
            raise VirtqueueError(f"{what} {addr:#x}+{length:#x} is outside guest RAM")
        self._ram = (base, ram)
        return base, ram

    # -- the used ring ------------------------------------------------------------------------------------------
    def push(self, chain: Chain, written: int) -> bool:
        """Return a chain to the driver with the number of bytes the device wrote into it: `push_many`."""
        return self.push_many(((chain, written),))

    def push_many(self, done: Iterable[tuple[Chain, int]]) -> bool:
        """Return chains (their used elements, then one fence and one used-index store); True if the driver asked
        to be interrupted for them (EVENT_IDX or NO_INTERRUPT). Chains taken from a ring disabled since are dropped:
        False (and nothing written) when no chain was returned. One method, not two: every request comes here."""
        if not self.ready:
            return False
        ring, size, epoch, idx = self._used_ring, self.size, self.epoch, self.used_idx
        for chain, written in done:
            if chain.epoch != epoch:
                continue
            slot = 2 * (idx % size)
            ring[slot] = chain.head
            ring[slot + 1] = written & 0xFFFF_FFFF
            idx = (idx + 1) & 0xFFFF
        if idx == self.used_idx:
            return False
        release, acquire = self._fence_release, self._fence_acquire
        release()  # fence: the elements before the index
        acquire()
        self.used_idx = idx
        self._used_head[1] = idx
        release()  # fence: the used index must be visible before the driver's suppression fields are read
        acquire()
        old = self.signalled_used
        if old == idx:
            return False
        self.signalled_used = idx
        if self.event_idx:
            used_event = self._avail[2 + size]
            return ((idx - used_event - 1) & 0xFFFF) < ((idx - old) & 0xFFFF)
        return not self._avail[0] & AVAIL_F_NO_INTERRUPT


_EMPTY = memoryview(b"")
_NO_REGION = (1 << 64, _EMPTY)  # above any descriptor address: every buffer's start is negative from it
@functools.cache  # one entry per indirect table length: at most max_size of them
def _links(count: int) -> tuple[bytes, bytes]:
    """The flags | next << 16 words of a straight table's descriptors but the last, all device-readable and all
    device-writable."""
    readable, writable = (struct.pack(f"<{count - 1}I", *(flags | (i + 1) << 16 for i in range(count - 1)))
                          for flags in (DESC_F_NEXT, DESC_F_NEXT | DESC_F_WRITE))
    return readable, writable


def _le(view: memoryview, fmt: str) -> memoryview:
    """`view` as an array of native integers: the rings' little-endian fields on a little-endian host."""
    return view.cast(fmt)


if sys.byteorder != "little":  # virtio 1.x rings are little-endian; pyvmm's hosts (x86_64, arm64) are too
    raise ImportError("pyvmm's virtqueues assume a little-endian host")
