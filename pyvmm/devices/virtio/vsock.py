"""virtio-vsock (virtio 1.2, 5.10) backed by the host kernel's vhost-vsock (/dev/vhost-vsock).

The data path never enters pyvmm: vhost reads the rx/tx rings from guest RAM itself (through the memory table given
with VHOST_SET_MEM_TABLE) and is kicked by the same eventfds KVM_IOEVENTFD writes on QueueNotify. Its "call"
eventfds come back to pyvmm's worker rather than going straight to an irqfd, because a virtio-mmio driver reads
InterruptStatus in its handler and ignores an interrupt whose used-buffer bit is clear: the worker sets the bit,
then signals. The event queue (2) stays in userspace; pyvmm never sends transport events (no live migration).
"""

from __future__ import annotations

import errno
import os
import struct

from pyvmm.devices.virtio.config import VsockConfig
from pyvmm.devices.virtio.constants import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1
from pyvmm.devices.virtio.device import HostFds, Interrupt, Queue, VirtioDevice
from pyvmm.devices.virtio.vhost import VHOST_VSOCK_DEVICE, VhostVsock
from pyvmm.devices.virtio.virtqueue import Memory
from pyvmm.errors import HostResourceError, KvmPermissionError

ID_VSOCK = 19
RX, TX, EVENT = 0, 1, 2

# Features pyvmm lets through from vhost: the ring features the transport implements, plus vsock's own low bits.
TRANSPORT_BITS = (1 << F_VERSION_1) | (1 << F_RING_EVENT_IDX) | (1 << F_RING_INDIRECT_DESC)
DEVICE_BITS = (1 << 24) - 1


def available() -> bool:
    return os.path.exists(VHOST_VSOCK_DEVICE)


class Vsock(VirtioDevice):
    name = "vsock"
    device_id = ID_VSOCK
    queue_sizes = (256, 256, 64)
    vhost_queues = (RX, TX)  # served by the kernel

    def __init__(self, config: VsockConfig) -> None:
        super().__init__()
        self.cid = config.cid
        try:
            self.vhost = VhostVsock()
        except FileNotFoundError:
            raise HostResourceError(f"--vsock: {VHOST_VSOCK_DEVICE} does not exist (load vhost_vsock: modprobe "
                                    f"vhost_vsock)") from None
        except PermissionError:
            raise KvmPermissionError(f"--vsock: {VHOST_VSOCK_DEVICE} cannot be opened: permission denied") from None
        try:
            self.host_features = self.vhost.get_features()
            try:
                self.vhost.set_guest_cid(self.cid)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise HostResourceError(f"--vsock cid={self.cid} is already used by another VM on this host") \
                        from None
                raise HostResourceError(f"--vsock cid={self.cid}: vhost-vsock refused it ({err.strerror})") from None
        except BaseException:
            self.vhost.close()
            raise
        self.features = self.host_features & DEVICE_BITS
        self.call_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.vhost_queues]
        self.running = False

    def config_space(self) -> bytes:
        return struct.pack("<Q", self.cid)

    def watched_fds(self):
        return [(fd, lambda fd=fd: self._called(fd)) for fd in self.call_fds]

    def _called(self, fd: int) -> None:
        """vhost used buffers of a queue: the transport sets InterruptStatus, then interrupts."""
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        if self.interrupt is not None:
            self.interrupt.signal_used()

    def activate(self, memory: Memory, interrupt: Interrupt, queues: list[Queue],
                 host_fds: HostFds | None = None) -> None:
        super().activate(memory, interrupt, queues, host_fds)
        vhost = self.vhost
        vhost.set_features(self.acked_features & (self.host_features | TRANSPORT_BITS) & self.host_features)
        vhost.set_mem_table([(r.guest_phys, r.size, memory.host_address(r.guest_phys, r.size))
                             for r in memory.regions])
        for index, call_fd in zip(self.vhost_queues, self.call_fds):
            ring = queues[index].vhost_ring()
            if ring is None:
                return  # the driver did not set this queue up: leave the device stopped
            vhost.set_vring_num(index, ring.size)
            vhost.set_vring_base(index, ring.next_avail)
            vhost.set_vring_addr(index, desc=memory.host_address(ring.desc, 16 * ring.size),
                                 used=memory.host_address(ring.used, 6 + 8 * ring.size),
                                 avail=memory.host_address(ring.avail, 6 + 2 * ring.size))
            vhost.set_vring_kick(index, ring.kick_fd)
            vhost.set_vring_call(index, call_fd)
        vhost.set_running(True)
        self.running = True

    def reset(self) -> None:
        super().reset()
        if self.running:
            self.vhost.set_running(False)
            self.running = False

    def notify(self, index: int) -> None:
        pass  # only the event queue reaches here; its buffers wait for events pyvmm never sends

    def close(self) -> None:
        if self.vhost.fd >= 0:
            self.reset()
            self.vhost.close()
        for fd in self.call_fds:
            os.close(fd)
        self.call_fds = []
