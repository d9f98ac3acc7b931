"""Options of the virtio devices, parsed from `pyvmm run` option strings. Light on purpose: pyvmm.config imports
it, and `pyvmm run` imports that at startup."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pyvmm.errors import UsageError

CACHE_MODES = ("writeback", "writethrough", "unsafe")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")  # IFNAMSIZ - 1


@dataclass
class DiskConfig:
    path: Path
    read_only: bool = False
    serial: str | None = None
    cache: str = "writeback"


@dataclass
class NetConfig:
    tap: str
    mac: str | None = None  # None: a fixed locally administered address derived from the slot


@dataclass
class ConsoleDeviceConfig:
    """virtio-console: the guest's hvc0."""


@dataclass
class RngConfig:
    """virtio-rng fed from the host's getrandom()."""


@dataclass
class VsockConfig:
    """virtio-vsock through the host's vhost-vsock: cid is the guest's address."""

    cid: int


DeviceConfig = DiskConfig | NetConfig | ConsoleDeviceConfig | RngConfig | VsockConfig


def _fields(option: str, text: str) -> tuple[str, dict[str, str], set[str]]:
    parts = [p.strip() for p in text.split(",")]
    head, keyed, flags = parts[0], {}, set()
    for part in parts[1:]:
        if not part:
            continue
        if "=" in part:
            key, value = part.split("=", 1)
            keyed[key.strip()] = value.strip()
        else:
            flags.add(part)
    return head, keyed, flags


def parse_disk(text: str) -> DiskConfig:
    """`PATH[,ro][,serial=ID][,cache=writeback|writethrough|unsafe]`."""
    path, keyed, flags = _fields("--disk", text)
    if not path:
        raise UsageError(f"--disk {text!r}: give the image path first, e.g. --disk disk.img,ro")
    unknown = (flags - {"ro", "rw"}) | (set(keyed) - {"serial", "cache"})
    if unknown:
        raise UsageError(f"--disk {text!r}: unknown setting {sorted(unknown)[0]!r} (known: ro, serial=ID, cache=MODE)")
    return DiskConfig(Path(path), read_only="ro" in flags, serial=keyed.get("serial"),
                      cache=keyed.get("cache", "writeback"))


def parse_net(text: str) -> NetConfig:
    """`tap=NAME[,mac=52:54:00:12:34:56]`."""
    head, keyed, flags = _fields("--net", text)
    if head and "=" in head:
        key, value = head.split("=", 1)
        keyed[key.strip()] = value.strip()
    elif head:
        flags.add(head)
    unknown = flags | (set(keyed) - {"tap", "mac"})
    if unknown or "tap" not in keyed:
        raise UsageError(f"--net {text!r}: expected tap=NAME[,mac=XX:XX:XX:XX:XX:XX]")
    return NetConfig(tap=keyed["tap"], mac=keyed.get("mac"))


def parse_vsock(text: str) -> VsockConfig:
    """`cid=N` (N >= 3: 0-2 are reserved for the hypervisor, the host and local)."""
    head, keyed, flags = _fields("--vsock", text)
    if "=" in head:
        key, value = head.split("=", 1)
        keyed[key.strip()] = value.strip()
    if flags or set(keyed) != {"cid"}:
        raise UsageError(f"--vsock {text!r}: expected cid=N")
    try:
        return VsockConfig(int(keyed["cid"], 0))
    except ValueError:
        raise UsageError(f"--vsock {text!r}: cid must be a number") from None


def validate_devices(devices: list) -> None:
    disks = [d for d in devices if isinstance(d, DiskConfig)]
    for disk in disks:
        if disk.cache not in CACHE_MODES:
            raise UsageError(f"--disk {disk.path}: cache={disk.cache} is not one of {', '.join(CACHE_MODES)}")
        if disk.serial is not None and len(disk.serial.encode()) > 20:
            raise UsageError(f"--disk {disk.path}: serial={disk.serial} is longer than virtio-blk's 20 bytes")
    for net in (d for d in devices if isinstance(d, NetConfig)):
        if not _IFNAME_RE.match(net.tap):
            raise UsageError(f"--net tap={net.tap}: not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")
        if net.mac is not None:
            if not _MAC_RE.match(net.mac):
                raise UsageError(f"--net mac={net.mac}: expected six hex bytes like 52:54:00:12:34:56")
            if int(net.mac[:2], 16) & 1:
                raise UsageError(f"--net mac={net.mac} is a multicast address: the first byte must be even")
    for vsock in (d for d in devices if isinstance(d, VsockConfig)):
        if not 3 <= vsock.cid < 0xFFFF_FFFF:
            raise UsageError(f"--vsock cid={vsock.cid}: guest CIDs are 3 to 4294967294 (0-2 are reserved)")
    for kind in (ConsoleDeviceConfig, RngConfig, VsockConfig):
        if sum(isinstance(d, kind) for d in devices) > 1:
            raise UsageError(f"only one {kind.__doc__.split(':')[0].strip().rstrip('.')} device is supported")
