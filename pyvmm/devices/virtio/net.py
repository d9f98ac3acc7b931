"""virtio-net (virtio 1.2, 5.1) on a host TAP device: one receive and one transmit queue.

The TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte vnet header (virtio_net_hdr_v1, the
VERSION_1 layout), so frames and their offload metadata move between TAP and guest buffers without translation:
readv/writev straight on memoryviews of guest RAM. Checksum and TSO offloads are offered to the guest and, for the
receive direction, enabled on the TAP (TUNSETOFFLOAD) only when the guest accepted them.
"""

from __future__ import annotations

import os
import struct

from pyvmm.devices.virtio.config import NetConfig
from pyvmm.devices.virtio.constants import ID_NET
from pyvmm.devices.virtio.device import HostFds, Interrupt, Queue, VirtioDevice
from pyvmm.devices.virtio.tap import NUM_BUFFERS_OFFSET, VNET_HDR_SIZE, Tap
from pyvmm.devices.virtio.virtqueue import Chain, Memory, VirtqueueError, write_to
from pyvmm_bindings import constants as c

RX, TX = 0, 1
F_CSUM, F_GUEST_CSUM, F_MAC, F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_TSO4, F_HOST_TSO6 = 0, 1, 5, 7, 8, 11, 12
RX_BATCH = 64


class Net(VirtioDevice):
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
        self.tap = Tap(config.tap)
        self._rx_chain: tuple[Queue, Chain] | None = None  # taken from that queue handle, waiting for a frame
        self._watching = True  # the worker polls the TAP from the start (watched_fds)
        # Frames and their bytes (vnet header excluded) each way, and transmitted frames the TAP refused (worker).
        self.rx_frames = self.rx_bytes = self.tx_frames = self.tx_bytes = self.tx_dropped = 0

    def config_space(self) -> bytes:
        return self.mac + struct.pack("<H", 1)  # mac, status (link up; STATUS is not offered, so informative)

    def activate(self, memory: Memory, interrupt: Interrupt, queues: list[Queue],
                 host_fds: HostFds | None = None) -> None:
        super().activate(memory, interrupt, queues, host_fds)
        offloads = 0
        if self.negotiated(F_GUEST_CSUM):
            offloads |= c.TUN_F_CSUM
            if self.negotiated(F_GUEST_TSO4):
                offloads |= c.TUN_F_TSO4
            if self.negotiated(F_GUEST_TSO6):
                offloads |= c.TUN_F_TSO6
        self.tap.set_offload(offloads)

    def reset(self) -> None:
        super().reset()
        self._rx_chain = None  # its ring is gone

    def watched_fds(self):
        return [(self.tap.fd, self._receive)]

    # -- worker thread ------------------------------------------------------------------------------------------
    def notify(self, index: int) -> None:
        if index == RX:
            self._resume()
            self._receive()
        else:
            super().notify(index)

    def serve(self, index: int, chain: Chain) -> int:
        """A transmitq chain: one frame (vnet header first) for the TAP."""
        try:
            sent = os.writev(self.tap.fd, chain.readable)
        except OSError:
            self.tx_dropped += 1  # TAP queue full or interface down: dropped, as a wire would
            return 0
        self.tx_frames += 1
        self.tx_bytes += sent - VNET_HDR_SIZE
        return 0

    def activity(self) -> str:
        return (f"{self.rx_frames} frames received ({self.rx_bytes} bytes), {self.tx_frames} sent ({self.tx_bytes} "
                f"bytes), {self.tx_dropped} dropped by the TAP (interface down or queue full)")

    def _receive(self) -> None:
        if len(self.queues) <= RX:
            self._pause()  # not activated (or reset): the guest has no buffers for us
            return
        queue = self.queues[RX]
        if self._rx_chain is not None and self._rx_chain[0] is not queue:
            self._rx_chain = None  # taken before a reset
        done: list[tuple[Chain, int]] = []
        for _ in range(RX_BATCH):
            if self._rx_chain is None:
                taken = queue.pop()
                if taken is None:
                    self._pause()  # no guest buffers: stop polling the TAP until the guest adds some
                    break
                if taken.writable_len < VNET_HDR_SIZE:
                    raise VirtqueueError(f"a receive buffer of {taken.writable_len} bytes cannot hold the "
                                         f"{VNET_HDR_SIZE}-byte vnet header")
                self._rx_chain = (queue, taken)
            chain = self._rx_chain[1]
            try:
                size = os.readv(self.tap.fd, chain.writable)
            except BlockingIOError:
                break
            self._rx_chain = None
            self.rx_frames += 1
            self.rx_bytes += size - VNET_HDR_SIZE
            # num_buffers follows the fields the TAP fills; it is 1 since MRG_RXBUF is not offered
            write_to(chain.writable, b"\x01\x00", skip=NUM_BUFFERS_OFFSET)
            done.append((chain, size))
        queue.complete_batch(done)

    def _pause(self) -> None:
        if self._watching and self.host_fds is not None:
            self.host_fds.unwatch(self.tap.fd)
            self._watching = False

    def _resume(self) -> None:
        if not self._watching and self.host_fds is not None:
            self.host_fds.watch(self.tap.fd, self._receive)
            self._watching = True

    def close(self) -> None:
        self.tap.close()
