"""Which virtio device class serves each device option: the one table to extend when adding a virtio device.

Each entry maps an option's config class (pyvmm.devices.virtio.config) to a builder. Builders import their device
module only when a VM has such a device (the block device alone costs tens of milliseconds of start-up). The table's
order is the order devices take their virtio-mmio slots: disks first (vda, vdb, ...), then net, rng, console, vsock.
"""

from __future__ import annotations

from typing import Callable

from pyvmm.devices.virtio import config as vc
from pyvmm.devices.virtio.device import VirtioDevice

Output = Callable[[bytes], None]


def _block(spec: vc.DiskConfig, index: int, output: Output) -> VirtioDevice:
    from pyvmm.devices.virtio.blk import Block

    return Block(spec, index)


def _net(spec: vc.NetConfig, index: int, output: Output) -> VirtioDevice:
    from pyvmm.devices.virtio.net import Net

    return Net(spec, index)


def _rng(spec: vc.RngConfig, index: int, output: Output) -> VirtioDevice:
    from pyvmm.devices.virtio.rng import Rng

    return Rng()


def _console(spec: vc.ConsoleDeviceConfig, index: int, output: Output) -> VirtioDevice:
    from pyvmm.devices.virtio.console import Console

    return Console(output)


def _vsock(spec: vc.VsockConfig, index: int, output: Output) -> VirtioDevice:
    from pyvmm.devices.virtio.vsock import Vsock

    return Vsock(spec)


# config class -> builder(config, index among devices of that kind, console output)
BUILDERS: dict[type, Callable[..., VirtioDevice]] = {
    vc.DiskConfig: _block,
    vc.NetConfig: _net,
    vc.RngConfig: _rng,
    vc.ConsoleDeviceConfig: _console,
    vc.VsockConfig: _vsock,
}


def in_slot_order(specs: list[vc.DeviceConfig]) -> list[vc.DeviceConfig]:
    order = list(BUILDERS)
    return sorted(specs, key=lambda spec: order.index(type(spec)))


def make_device(spec: vc.DeviceConfig, index: int, output: Output) -> VirtioDevice:
    try:
        builder = BUILDERS[type(spec)]
    except KeyError:
        from pyvmm.errors import UsageError

        raise UsageError(f"unknown virtio device configuration {spec!r}") from None
    return builder(spec, index, output)
