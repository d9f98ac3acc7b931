"""Writes a device lets KVM queue (coalesced MMIO/PIO) instead of exiting, and who drains them.

KVM appends the guest's writes to a registered zone to the VM's coalesced ring (pyvmm.kvm.coalesced) and exits only
when the ring is full. The vCPU loop never looks at the ring (every exit would pay for it): the device drains it
before each register access that does exit, which keeps its semantics those of a device that saw every write; the
flusher thread drains it for a guest that writes and then idles inside KVM (WFI/HLT, no exit): every
FLUSH_PERIOD_S while it finds writes, backing off to FLUSH_PERIOD_MAX_S while it finds none (an idle VM costs the
host 5 wake-ups a second, not 50). `close()` drains it one last time. kvmtool instead drains after every exit
(kvm_cpu__handle_coalesced_mmio).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Sequence, Protocol

from pyvmm.devices.debuglog import debug

if TYPE_CHECKING:
    from pyvmm.kvm.coalesced import CoalescedRing

FLUSH_PERIOD_S = 0.02  # how late queued output may appear while the guest makes no exit ...
FLUSH_PERIOD_MAX_S = 0.2  # ... and after a quiet spell


class QueuedWriteDevice(Protocol):
    """A device whose writes may arrive queued: `take()` gives (offset, size, value) of each, oldest first."""

    name: str
    queued_writes: int  # how many writes came through the queue

    def queue_writes(self, take: Callable[[], Sequence[tuple[int, int, int]]]) -> None: ...

    def flush(self) -> int: ...  # how many queued writes it applied


class CoalescedZone:
    """One device's zone in the ring; the only one, since the ring is the VM's and one consumer takes every entry."""

    def __init__(self, ring: CoalescedRing, device: QueuedWriteDevice, base: int, size: int, pio: bool) -> None:
        self.ring = ring
        self.device = device
        self._base, self._end, self._pio = base, base + size, int(pio)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name=f"{device.name}-flush", daemon=True)
        device.queue_writes(self._take)

    def start(self) -> None:
        self._thread.start()

    def _take(self) -> list[tuple[int, int, int]]:
        base, end, pio = self._base, self._end, self._pio
        # Only this zone is registered, so nothing else can be in the ring; an entry outside it is dropped.
        return [(addr - base, length, value) for addr, length, is_pio, value in self.ring.take()
                if base <= addr < end and is_pio == pio]

    def _flush_loop(self) -> None:
        flush = self.device.flush
        period = FLUSH_PERIOD_S
        while not self._closing.wait(period):
            try:
                period = FLUSH_PERIOD_S if flush() else min(period * 2, FLUSH_PERIOD_MAX_S)
            except Exception:  # the console's output failing must not end the flushing of later output
                import logging

                logging.getLogger(__name__).debug("%s: flushing queued writes failed", self.device.name,
                                                  exc_info=True)

    def close(self) -> None:
        """Stop the flusher and drain what is left: the guest's last bytes appear before the VM is gone."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        try:
            self.device.flush()
        finally:
            self.ring.close()
        debug(__name__, "%s: %d writes came through KVM's coalesced ring", self.device.name, self.device.queued_writes)
