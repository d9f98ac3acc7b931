"""VM configuration: plain dataclasses filled by the CLI or the Python API, validated before anything is created."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyvmm.errors import UsageError

MIB = 1 << 20
GIB = 1 << 30

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_SIZE_UNITS = {"": MIB, "k": 1 << 10, "m": MIB, "g": GIB, "t": 1 << 40}

# Below this a guest cannot hold even the bundled payloads plus page tables/DTB.
MIN_MEMORY = 16 * MIB
# One vCPU thread each: far above what a Python VMM should be asked for, and KVM's own limit is checked too.
MAX_CPUS = 512


def parse_size(text: str) -> int:
    """Parse '256M', '1G', '512' (MiB when no unit, like kvmtool and QEMU) into bytes."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise UsageError(f"cannot parse memory size {text!r}: use a number with an optional K, M or G suffix (e.g. 256M)")
    number, unit, _ = match.groups()
    return int(number) * _SIZE_UNITS[unit.lower()]


def host_memory_bytes() -> int:
    """MemTotal of the host, the ceiling for a guest's RAM."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class ConsoleConfig:
    """Where the guest's UART goes: output to stdout (and optionally a log), input from stdin."""

    stdin: bool = True
    log_path: Path | None = None


@dataclass
class VmConfig:
    """Everything needed to build and run one VM."""

    kernel: Path | None = None  # None: the bundled `hello` guest for the host's architecture
    initrd: Path | None = None
    cmdline: str = ""
    memory: int = 256 * MIB
    cpus: int = 1
    arch: str = ""  # filled with the host's architecture
    guest_args: list[int] = field(default_factory=list)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    irqchip: str = "auto"  # arm64: gicv3 | gicv2 | auto
    on_reboot: str = "exit"  # exit | restart
    dtb_dump: Path | None = None
    debug: bool = False
    # virtio devices, in the order given: pyvmm.devices.virtio.config.{DiskConfig, NetConfig, RngConfig,
    # ConsoleDeviceConfig} (parsed from --disk, --net, --rng, --console virtio by pyvmm.cli.run_devices)
    devices: list = field(default_factory=list)

    def validate(self) -> None:
        """Reject what can never work, with messages that say what to do instead."""
        if self.cpus < 1:
            raise UsageError(f"--cpus must be at least 1 (got {self.cpus})")
        if self.cpus > MAX_CPUS:
            raise UsageError(f"--cpus {self.cpus} is absurd for pyvmm: at most {MAX_CPUS} (and KVM's own limit)")
        if self.memory < MIN_MEMORY:
            raise UsageError(f"--memory {self.memory // MIB}M is too small: at least {MIN_MEMORY // MIB}M")
        host = host_memory_bytes()
        if self.memory > host:
            raise UsageError(
                f"--memory {self.memory // MIB}M is more than this host has ({host // MIB}M): ask for less"
            )
        if self.on_reboot not in ("exit", "restart"):
            raise UsageError(f"--on-reboot must be exit or restart (got {self.on_reboot!r})")
        if self.irqchip not in ("auto", "gicv3", "gicv2"):
            raise UsageError(f"--irqchip must be auto, gicv3 or gicv2 (got {self.irqchip!r})")
        for value in self.guest_args:
            if not 0 <= value < 1 << 32:
                raise UsageError(f"--guest-arg {value} does not fit in 32 bits")
        if self.devices:
            from pyvmm.devices.virtio.config import validate_devices

            validate_devices(self.devices)
