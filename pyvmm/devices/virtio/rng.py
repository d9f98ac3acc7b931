"""virtio-rng (virtio 1.2, 5.4): the guest's /dev/hwrng, filled from the host's getrandom()."""

from __future__ import annotations

import os

from pyvmm.devices.virtio.constants import ID_RNG
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.virtqueue import Chain, write_to

MAX_PER_REQUEST = 1 << 16  # a guest asking for gigabytes gets it in bounded slices


class Rng(VirtioDevice):
    name = "rng"
    device_id = ID_RNG
    queue_sizes = (64,)
    batch = 16

    def config_space(self) -> bytes:
        return b""

    def serve(self, index: int, chain: Chain) -> int:
        wanted = min(chain.writable_len, MAX_PER_REQUEST)
        return write_to(chain.writable, os.getrandom(wanted))
