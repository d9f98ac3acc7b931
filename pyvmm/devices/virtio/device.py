"""The base of pyvmm's virtio devices: what the transport and the worker expect, with safe defaults."""

from __future__ import annotations

from typing import Callable

from pyvmm.devices.virtio.transport import MmioTransport


class VirtioDeviceBase:
    name = "virtio"
    device_id = 0
    queue_sizes: tuple[int, ...] = (256,)
    features = 0

    def __init__(self) -> None:
        self.transport: MmioTransport | None = None
        self.worker = None  # the DeviceWorker serving this device, for devices that (un)watch host fds

    def config_space(self) -> bytes:
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        pass  # read-only configuration unless a device says otherwise

    def activate(self, transport: MmioTransport) -> None:
        """DRIVER_OK was written (transport lock held: keep it short)."""
        self.transport = transport

    def reset(self) -> None:
        """The driver reset the device (transport lock held)."""

    def notify(self, queue: int) -> None:
        """The driver made buffers available in `queue` (worker thread)."""

    def watched_fds(self) -> list[tuple[int, Callable[[], None]]]:
        """Host file descriptors the worker should poll for this device from the start."""
        return []

    def close(self) -> None:
        pass
