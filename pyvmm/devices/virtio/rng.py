"""virtio-rng (virtio 1.2, 5.4): the guest's /dev/hwrng, filled from the host's getrandom()."""

from __future__ import annotations

import os

from pyvmm.devices.virtio.constants import ID_RNG
from pyvmm.devices.virtio.device import VirtioDeviceBase
from pyvmm.devices.virtio.virtqueue import write_to

MAX_PER_REQUEST = 1 << 16  # a guest asking for gigabytes gets it in bounded slices


class Rng(VirtioDeviceBase):
    name = "rng"
    device_id = ID_RNG
    queue_sizes = (64,)

    def notify(self, queue: int) -> None:
        transport = self.transport
        while True:
            generation, chains = transport.take(queue, limit=16)
            if not chains:
                return
            done = []
            for chain in chains:
                wanted = min(chain.writable_len, MAX_PER_REQUEST)
                done.append((chain.head, write_to(transport.memory, chain.writable, os.getrandom(wanted))))
            transport.complete(queue, generation, done)
