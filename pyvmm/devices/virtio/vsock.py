"""virtio-vsock (virtio 1.2, 5.10) backed by the host kernel's vhost-vsock (/dev/vhost-vsock).

The data path never enters pyvmm: vhost reads the rx/tx rings from guest RAM itself (through the memory table given
with VHOST_SET_MEM_TABLE) and is kicked by the same eventfds KVM_IOEVENTFD writes on QueueNotify. Its "call"
eventfds come back to pyvmm's worker rather than going straight to an irqfd, because a virtio-mmio driver reads
InterruptStatus in its handler and ignores an interrupt whose used-buffer bit is clear: the worker sets the bit,
then signals. The event queue (2) stays in userspace; pyvmm never sends transport events (no live migration).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from pyvmm.devices.virtio.config import VsockConfig
from pyvmm.devices.virtio.constants import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, INT_USED_BUFFER
from pyvmm.devices.virtio.device import VirtioDeviceBase
from pyvmm.errors import HostResourceError, KvmPermissionError

ID_VSOCK = 19
RX, TX, EVENT = 0, 1, 2
VHOST_DEVICE = "/dev/vhost-vsock"


def _io(nr: int) -> int:
    return (0xAF << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (0xAF << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (0xAF << 8) | nr


VHOST_GET_FEATURES = _ior(0x00, 8)
VHOST_SET_FEATURES = _iow(0x00, 8)
VHOST_SET_OWNER = _io(0x01)
VHOST_SET_MEM_TABLE = _iow(0x03, 8)  # struct vhost_memory header; the regions follow it
VHOST_SET_VRING_NUM = _iow(0x10, 8)
VHOST_SET_VRING_ADDR = _iow(0x11, 40)
VHOST_SET_VRING_BASE = _iow(0x12, 8)
VHOST_SET_VRING_KICK = _iow(0x20, 8)
VHOST_SET_VRING_CALL = _iow(0x21, 8)
VHOST_VSOCK_SET_GUEST_CID = _iow(0x60, 8)
VHOST_VSOCK_SET_RUNNING = _iow(0x61, 4)

# Features pyvmm lets through from vhost: the ring features the transport implements, plus vsock's own low bits.
TRANSPORT_BITS = (1 << F_VERSION_1) | (1 << F_RING_EVENT_IDX) | (1 << F_RING_INDIRECT_DESC)
DEVICE_BITS = (1 << 24) - 1


def available() -> bool:
    return os.path.exists(VHOST_DEVICE)


class Vsock(VirtioDeviceBase):
    name = "vsock"
    device_id = ID_VSOCK
    queue_sizes = (256, 256, 64)
    vhost_queues = (RX, TX)  # served by the kernel: the worker must not drain their notify eventfds

    def __init__(self, config: VsockConfig, memory) -> None:
        super().__init__()
        self.cid = config.cid
        self.memory = memory
        try:
            self.fd = os.open(VHOST_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HostResourceError(f"--vsock: {VHOST_DEVICE} does not exist (load vhost_vsock: modprobe "
                                    f"vhost_vsock)") from None
        except PermissionError:
            raise KvmPermissionError(f"--vsock: {VHOST_DEVICE} cannot be opened: permission denied") from None
        try:
            fcntl.ioctl(self.fd, VHOST_SET_OWNER)
            self.host_features = struct.unpack("<Q", fcntl.ioctl(self.fd, VHOST_GET_FEATURES, bytes(8)))[0]
            try:
                fcntl.ioctl(self.fd, VHOST_VSOCK_SET_GUEST_CID, struct.pack("<Q", self.cid))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise HostResourceError(f"--vsock cid={self.cid} is already used by another VM on this host") \
                        from None
                raise HostResourceError(f"--vsock cid={self.cid}: vhost-vsock refused it ({err.strerror})") from None
        except BaseException:
            os.close(self.fd)
            raise
        self.features = self.host_features & DEVICE_BITS
        self.call_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.vhost_queues]
        self.running = False

    def config_space(self) -> bytes:
        return struct.pack("<Q", self.cid)

    def watched_fds(self):
        return [(fd, lambda fd=fd: self._called(fd)) for fd in self.call_fds]

    def _called(self, fd: int) -> None:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        transport = self.transport
        if transport is not None:
            with transport.lock:
                transport.isr |= INT_USED_BUFFER  # the bit first, then the interrupt
                transport.interrupt.trigger()

    def _hva(self, gpa: int, length: int) -> int:
        from pyvmm.kvm.ioctl import ffi

        for region in self.memory.regions:
            if region.guest_phys <= gpa and gpa + length <= region.end:
                buffer = ffi.from_buffer(region.mapping)
                try:
                    return int(ffi.cast("uintptr_t", buffer)) + gpa - region.guest_phys
                finally:
                    ffi.release(buffer)
        raise HostResourceError(f"vsock: ring at {gpa:#x} is outside guest RAM")  # validated before: not reached

    def activate(self, transport) -> None:
        super().activate(transport)
        features = transport.driver_features & (self.host_features | TRANSPORT_BITS) & self.host_features
        fcntl.ioctl(self.fd, VHOST_SET_FEATURES, struct.pack("<Q", features))
        regions = self.memory.regions
        table = struct.pack("<II", len(regions), 0) + b"".join(
            struct.pack("<QQQQ", r.guest_phys, r.size, self._hva(r.guest_phys, r.size), 0) for r in regions)
        fcntl.ioctl(self.fd, VHOST_SET_MEM_TABLE, table)
        for i, q in enumerate(self.vhost_queues):
            queue = transport.queues[q]
            if not queue.ready:
                return  # the driver did not set this queue up: leave the device stopped
            fcntl.ioctl(self.fd, VHOST_SET_VRING_NUM, struct.pack("<II", q, queue.size))
            fcntl.ioctl(self.fd, VHOST_SET_VRING_BASE, struct.pack("<II", q, queue.last_avail))
            avail_len, used_len = 6 + 2 * queue.size, 6 + 8 * queue.size
            fcntl.ioctl(self.fd, VHOST_SET_VRING_ADDR, struct.pack(
                "<IIQQQQ", q, 0, self._hva(queue.desc, 16 * queue.size), self._hva(queue.used, used_len),
                self._hva(queue.avail, avail_len), 0))
            fcntl.ioctl(self.fd, VHOST_SET_VRING_KICK, struct.pack("<Ii", q, transport.notify_fds[q]))
            fcntl.ioctl(self.fd, VHOST_SET_VRING_CALL, struct.pack("<Ii", q, self.call_fds[i]))
        fcntl.ioctl(self.fd, VHOST_VSOCK_SET_RUNNING, struct.pack("<i", 1))
        self.running = True

    def reset(self) -> None:
        if self.running:
            fcntl.ioctl(self.fd, VHOST_VSOCK_SET_RUNNING, struct.pack("<i", 0))
            self.running = False

    def notify(self, queue: int) -> None:
        pass  # only the event queue reaches here; its buffers wait for events pyvmm never sends

    def close(self) -> None:
        if self.fd >= 0:
            self.reset()
            os.close(self.fd)
            self.fd = -1
        for fd in self.call_fds:
            os.close(fd)
        self.call_fds = []
