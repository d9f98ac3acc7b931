"""The virtio device contract: what a device is given and what it provides. A device never sees its transport.

A transport (virtio-mmio here; crosvm's `VirtioDevice::activate` and Firecracker's `VirtioDevice` are the models)
reads the device's identity, queue sizes, features and config space, acknowledges the features the driver accepted
(`ack_features`) and, on DRIVER_OK, calls `activate(memory, interrupt, queues, host_fds)`:

- `memory`: guest RAM (pyvmm.kvm.memory.GuestMemory or a test model), bounds-checked;
- `interrupt`: `signal_used()` after used buffers, `signal_config()` after a config change;
- `queues`: one `Queue` per entry of `queue_sizes`: `pop()`/`drain(limit)` take chains, `complete(chain, written)`
  returns them (and signals the driver when it asked for that); `notify_later()` yields to the worker with chains
  still available; `vhost_ring()` describes the ring to a vhost backend;
- `host_fds`: where the device may stop and resume watching its host fds (net pauses its TAP with no guest buffers).

Handles are valid for one activation: after a driver reset they take and complete nothing, and the next DRIVER_OK
brings new ones. The worker thread calls `notify(index)` when the driver kicks a queue; the default serves it with
the one loop every userspace device shares: drain -> `serve_batch` (-> `serve` per chain) -> complete, at most
one ring's worth per call (then `notify_later`), so the work per notification is bounded.
A malformed chain is reported by raising VirtqueueError (or GuestMemoryError): the transport sets
DEVICE_NEEDS_RESET for this device only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Protocol

from pyvmm.devices.virtio.virtqueue import Chain, Memory


class Interrupt(ABC):
    """The device's way to interrupt the driver (the transport sets InterruptStatus, then raises the line)."""

    @abstractmethod
    def signal_used(self) -> None:
        """Buffers were returned outside `Queue.complete` (a vhost backend wrote the used ring)."""

    @abstractmethod
    def signal_config(self) -> None:
        """The config space changed."""


@dataclass(frozen=True)
class VhostRing:
    """What a vhost backend needs to serve one queue itself (VHOST_SET_VRING_NUM/BASE/ADDR/KICK)."""

    index: int
    size: int
    desc: int  # guest-physical addresses of the three ring areas
    avail: int
    used: int
    next_avail: int  # where the device side continues in the available ring
    kick_fd: int  # the eventfd KVM_IOEVENTFD writes on QueueNotify for this queue


class Queue(ABC):
    """One virtqueue as a device sees it, for one activation."""

    index: int

    @abstractmethod
    def pop(self) -> Chain | None:
        """The next available chain, or None (empty, or the device was reset)."""

    @abstractmethod
    def drain(self, limit: int) -> list[Chain]:
        """Up to `limit` available chains (empty when there are none); fewer than `limit` means the ring was found
        empty after them, so the driver will notify again for any chain it adds later."""

    @abstractmethod
    def complete_batch(self, done: list[tuple[Chain, int]]) -> None:
        """Return chains with the bytes written into each; interrupts the driver once if it asked for that."""

    def complete(self, chain: Chain, written: int) -> None:
        self.complete_batch([(chain, written)])

    @abstractmethod
    def notify_later(self) -> None:
        """Have the worker call the device's `notify` for this queue again once it has looked at its other file
        descriptors (and at stop): how a device yields with chains still available."""

    @abstractmethod
    def vhost_ring(self) -> VhostRing | None:
        """The ring for a vhost backend, or None when the driver did not set this queue up."""


class HostFds(Protocol):
    """The device worker's watch list, as a device may change it after activation (errors stop the device)."""

    def watch(self, fd: int, callback: Callable[[], None]) -> None: ...

    def unwatch(self, fd: int) -> None: ...


class VirtioDevice(ABC):
    name = "virtio"
    device_id = 0
    queue_sizes: tuple[int, ...] = (256,)
    vhost_queues: tuple[int, ...] = ()  # queues a vhost backend serves: the worker leaves their kicks alone
    features = 0
    batch = 64  # chains per drain in the default notify: bounds the work between two completions

    def __init__(self) -> None:
        self.acked_features = 0
        self.memory: Memory | None = None
        self.interrupt: Interrupt | None = None
        self.queues: list[Queue] = []
        self.host_fds: HostFds | None = None

    @abstractmethod
    def config_space(self) -> bytes:
        """The device-specific configuration (read by the driver at MMIO offset 0x100). It changes only in
        `write_config` or before `interrupt.signal_config()`: the transport publishes it to the guest then."""

    def write_config(self, offset: int, data: bytes) -> None:
        pass  # read-only configuration unless a device says otherwise

    def ack_features(self, features: int) -> None:
        """The driver's accepted feature set (FEATURES_OK), before `activate`."""
        self.acked_features = features

    def negotiated(self, bit: int) -> bool:
        return bool(self.acked_features >> bit & 1)

    def activate(self, memory: Memory, interrupt: Interrupt, queues: list[Queue],
                 host_fds: HostFds | None = None) -> None:
        """DRIVER_OK: the device may use its queues from now on. Called on a vCPU thread: keep it short."""
        self.memory = memory
        self.interrupt = interrupt
        self.queues = queues
        self.host_fds = host_fds

    def reset(self) -> None:
        """The driver reset the device: the queues given at activation are dead."""
        self.queues = []

    def notify(self, index: int) -> None:
        """The driver made buffers available in queue `index` (worker thread)."""
        if index >= len(self.queues):
            return  # not activated (or reset meanwhile)
        queue = self.queues[index]
        # At most one ring's worth per call: a driver that keeps adding chains must not keep the worker from its
        # other fds, nor from stopping.
        budget = self.queue_sizes[index]
        while budget > 0:
            wanted = self.batch if self.batch < budget else budget  # min() would parse keywords
            chains = queue.drain(wanted)
            if not chains:
                return
            budget -= len(chains)
            queue.complete_batch(list(zip(chains, self.serve_batch(index, chains))))
            if len(chains) < wanted:
                return  # the ring was empty after the last chain was taken: the driver kicks for the next one
        queue.notify_later()

    def serve_batch(self, index: int, chains: list[Chain]) -> list[int]:
        """Bytes written into each chain; devices that overlap requests (blk) override this."""
        return [self.serve(index, chain) for chain in chains]

    def serve(self, index: int, chain: Chain) -> int:
        """Handle one chain of queue `index`; returns the bytes written into its device-writable buffers."""
        raise NotImplementedError(f"{self.name} does not serve queue {index} in userspace")

    def activity(self) -> str:
        """What the device did, for --debug at close (e.g. frames and drops); empty if it keeps no count."""
        return ""

    def watched_fds(self) -> list[tuple[int, Callable[[], None]]]:
        """Host file descriptors the worker polls for this device from the start (callbacks run on the worker)."""
        return []

    def close(self) -> None:
        pass
