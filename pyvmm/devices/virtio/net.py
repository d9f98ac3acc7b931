"""virtio-net (virtio 1.2, 5.1) on a host TAP device: one receive and one transmit queue.

The TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte vnet header (virtio_net_hdr_v1, the
VERSION_1 layout), so frames and their offload metadata move between TAP and guest buffers without translation:
readv/writev straight on memoryviews of guest RAM. Checksum and TSO offloads are offered to the guest and, for the
receive direction, enabled on the TAP (TUNSETOFFLOAD) only when the guest accepted them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from pyvmm.devices.virtio.config import NetConfig
from pyvmm.devices.virtio.constants import ID_NET
from pyvmm.devices.virtio.device import VirtioDeviceBase
from pyvmm.devices.virtio.virtqueue import Chain, VirtqueueError, views, write_to
from pyvmm.errors import HostResourceError, KvmPermissionError

RX, TX = 0, 1
F_CSUM, F_GUEST_CSUM, F_MAC, F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_TSO4, F_HOST_TSO6 = 0, 1, 5, 7, 8, 11, 12
VNET_HDR_SIZE = 12

TUNSETIFF = 0x4004_54CA
TUNSETOFFLOAD = 0x4004_54D0
TUNSETVNETHDRSZ = 0x4004_54D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
RX_BATCH = 64


def open_tap(name: str) -> int:
    """Open (creating if absent) TAP device `name` for virtio-net; one-line errors for what users hit."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostResourceError("--net: /dev/net/tun does not exist (load the tun module: modprobe tun)") from None
    except PermissionError:
        raise KvmPermissionError("--net: /dev/net/tun cannot be opened: permission denied") from None
    try:
        request = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, request)
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
    except OSError as err:
        os.close(fd)
        if err.errno == errno.EPERM:
            raise KvmPermissionError(
                f"--net tap={name}: creating or attaching a TAP device needs CAP_NET_ADMIN (run as root, or create "
                f"it for your user first: ip tuntap add {name} mode tap vnet_hdr user $USER)") from None
        if err.errno == errno.EBUSY:
            raise HostResourceError(f"--net tap={name} is in use by another process") from None
        if err.errno == errno.EINVAL:
            raise HostResourceError(f"--net tap={name}: the device exists but is not a TAP with a vnet header "
                                    f"(a TUN or a multi-queue TAP?)") from None
        raise HostResourceError(f"--net tap={name}: {err.strerror}") from None
    return fd


class Net(VirtioDeviceBase):
    device_id = ID_NET
    queue_sizes = (256, 256)
    features = (1 << F_CSUM | 1 << F_GUEST_CSUM | 1 << F_MAC | 1 << F_GUEST_TSO4 | 1 << F_GUEST_TSO6
                | 1 << F_HOST_TSO4 | 1 << F_HOST_TSO6)

    def __init__(self, config: NetConfig, index: int = 0) -> None:
        super().__init__()
        self.name = f"net{index}"
        self.config = config
        mac = config.mac or f"52:54:00:12:34:{0x56 + index:02x}"
        self.mac = bytes(int(part, 16) for part in mac.split(":"))
        self.tap = open_tap(config.tap)
        self._rx_chain: tuple[int, Chain] | None = None  # taken, waiting for a frame
        self._watching = True

    def config_space(self) -> bytes:
        return self.mac + struct.pack("<H", 1)  # mac, status (link up; STATUS is not offered, so informative)

    def activate(self, transport) -> None:
        super().activate(transport)
        offloads = 0
        if transport.negotiated(F_GUEST_CSUM):
            offloads |= TUN_F_CSUM
            if transport.negotiated(F_GUEST_TSO4):
                offloads |= TUN_F_TSO4
            if transport.negotiated(F_GUEST_TSO6):
                offloads |= TUN_F_TSO6
        fcntl.ioctl(self.tap, TUNSETOFFLOAD, offloads)

    def reset(self) -> None:
        self._rx_chain = None

    def watched_fds(self):
        return [(self.tap, self._receive)]

    # -- worker thread ------------------------------------------------------------------------------------------
    def notify(self, queue: int) -> None:
        if queue == RX:
            if not self._watching and self.worker is not None:
                self.worker.watch(self.tap, self._guarded_receive)
                self._watching = True
            self._receive()
            return
        transport = self.transport
        while True:
            generation, chains = transport.take(TX, limit=64)
            if not chains:
                return
            for chain in chains:
                try:
                    os.writev(self.tap, views(transport.memory, chain.readable))
                except OSError:
                    pass  # TAP queue full or interface down: dropped, as a wire would
            transport.complete(TX, generation, [(c.head, 0) for c in chains])

    def _guarded_receive(self) -> None:
        from pyvmm.devices.virtio.transport import guarded

        guarded(self.transport, "receive", self._receive)

    def _receive(self) -> None:
        transport = self.transport
        if transport is None or not transport.running:
            self._pause()
            return
        generation = transport.generation
        if self._rx_chain is not None and self._rx_chain[0] != generation:
            self._rx_chain = None  # taken before a reset
        done: list[tuple[int, int]] = []
        for _ in range(RX_BATCH):
            if self._rx_chain is None:
                taken_generation, chains = transport.take(RX, limit=1)
                if not chains or taken_generation != generation:
                    self._pause()  # no guest buffers: stop polling the TAP until the guest adds some
                    break
                if chains[0].writable_len < VNET_HDR_SIZE:
                    raise VirtqueueError(f"a receive buffer of {chains[0].writable_len} bytes cannot hold the "
                                         f"{VNET_HDR_SIZE}-byte vnet header")
                self._rx_chain = (generation, chains[0])
            chain = self._rx_chain[1]
            buffers = views(transport.memory, chain.writable)
            try:
                size = os.readv(self.tap, buffers)
            except BlockingIOError:
                break
            self._rx_chain = None
            # num_buffers follows the 10 bytes the TAP fills; it is 1 since MRG_RXBUF is not offered
            write_to(transport.memory, chain.writable, b"\x01\x00", skip=10)
            done.append((chain.head, size))
        transport.complete(RX, generation, done)

    def _pause(self) -> None:
        if self._watching and self.worker is not None:
            self.worker.unwatch(self.tap)
            self._watching = False

    def close(self) -> None:
        if self.tap >= 0:
            os.close(self.tap)
            self.tap = -1
