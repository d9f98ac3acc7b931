"""`pyvmm run` options of the devices area (see pyvmm/cli/areas.py): virtio disks, network, console and entropy."""

from __future__ import annotations

from typing import Any

import click

from pyvmm.cli.areas import NoHooks
from pyvmm.config import VmConfig

OPTIONS: list = [
    click.option("--disk", "disks", multiple=True, metavar="PATH[,ro][,serial=ID][,cache=MODE]",
                 help="A virtio-blk disk on a raw image file (repeatable: vda, vdb, ... in order). ro: read-only "
                      "(guest writes fail, the file is never modified); serial: the ID the guest reads (20 bytes at "
                      "most); cache: writeback (default; the guest's flush fsyncs), writethrough (O_DSYNC) or unsafe "
                      "(flushes ignored). The file is locked: a second pyvmm cannot use it for writing."),
    click.option("--net", "nets", multiple=True, metavar="tap=NAME[,mac=XX:XX:XX:XX:XX:XX]",
                 help="A virtio-net interface on host TAP device NAME (created if absent; needs CAP_NET_ADMIN)."),
    click.option("--console", "console_kind", type=click.Choice(["serial", "virtio"]), default="serial",
                 show_default=True,
                 help="Guest console: the UART (ttyS0), or a virtio-console (hvc0; the UART stays for early output "
                      "and pyvmm adds `console=hvc0 earlycon` unless -p names a console). Needs virtio_mmio and "
                      "virtio_console in the guest kernel."),
    click.option("--rng", is_flag=True, help="A virtio-rng device fed from the host's getrandom() (/dev/hwrng)."),
    click.option("--vsock", "vsock", metavar="cid=N",
                 help="A virtio-vsock device with guest CID N (3 or more), served by the host kernel's vhost-vsock "
                      "(/dev/vhost-vsock; modprobe vhost_vsock). Host programs reach the guest at (N, port)."),
]


def setup(config: VmConfig, values: dict[str, Any]) -> NoHooks:
    from pyvmm.devices.virtio import config as vc

    devices: list = [vc.parse_disk(text) for text in values.get("disks", ())]
    devices += [vc.parse_net(text) for text in values.get("nets", ())]
    if values.get("vsock"):
        devices.append(vc.parse_vsock(values["vsock"]))
    if values.get("rng"):
        devices.append(vc.RngConfig())
    if values.get("console_kind") == "virtio":
        devices.append(vc.ConsoleDeviceConfig())
        if "console=" not in config.cmdline:
            config.cmdline = f"{config.cmdline} console=hvc0 earlycon".strip()
    config.devices = devices
    return NoHooks()  # the devices live and die with the machine (Machine.close stops them)
