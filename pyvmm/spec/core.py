"""`VmSpec`: everything needed to build and run one VM, as plain dataclasses, validated once before anything is made.

The core fields describe the machine; `devices` the virtio devices; `idle` and `testing` the features that watch or
tune the VM while it runs (pyvmm.vmm.runner turns them into lifecycle subscribers).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyvmm.errors import UsageError
from pyvmm.idle.policy import IdlePolicy, check_affinity

if TYPE_CHECKING:
    from pyvmm.devices.virtio.config import DeviceConfig

MIB = 1 << 20
GIB = 1 << 30

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_SIZE_UNITS = {"": MIB, "k": 1 << 10, "m": MIB, "g": GIB, "t": 1 << 40}

# arm64 interrupt controllers: auto = v3 when the host has it, else v2; gicv3-its adds an ITS (MSIs as LPIs).
IRQCHIPS = ("auto", "gicv3", "gicv3-its", "gicv2")
# Below this a guest cannot hold even the bundled payloads plus page tables/DTB.
MIN_MEMORY = 16 * MIB
# What `--console virtio` adds to a Linux command line (unless --nodefaults or -p names a console).
VIRTIO_CONSOLE_PARAMS = "console=hvc0 earlycon"
# One vCPU thread each: far above what a Python VMM should be asked for, and KVM's own limit is checked too.
MAX_CPUS = 512
# A deadline the host's clocks and timers can represent (~31 years); inf or 1e308 would overflow them.
MAX_TIMEOUT = 1e9


def parse_size(text: str) -> int:
    """Parse '256M', '1G', '512' (MiB when no unit, like kvmtool and QEMU) into bytes."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise UsageError(f"cannot parse memory size {text!r}: use a number with an optional K, M or G suffix (e.g. 256M)")
    number, unit, _ = match.groups()
    return int(number) * _SIZE_UNITS[unit.lower()]


def format_size(size: int) -> str:
    """Bytes in the largest unit that holds them exactly, as a user writes them: 100000G stays 100000G, not
    102400000M (parse_size's inverse for every size it produces)."""
    for suffix, unit in (("T", 1 << 40), ("G", GIB), ("M", MIB), ("K", 1 << 10)):
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size} bytes"


def host_memory_bytes() -> int:
    """MemTotal of the host, the ceiling for a guest's RAM."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class ConsoleSpec:
    """Where the guest's UART goes: output to stdout (`echo`) and optionally a log, input from stdin. `coalesce`:
    KVM queues the guest's transmit writes in its coalesced ring where it can (pyvmm.devices.coalesced), and an MMIO
    UART's side-effect-free reads come from a read-only page (pyvmm.devices.mirror)."""

    stdin: bool = True
    echo: bool = True
    log_path: Path | None = None
    coalesce: bool = True


@dataclass
class IdleSpec:
    """The per-VM idle policy, the control socket and the statistics report (pyvmm.idle.feature)."""

    policy: IdlePolicy = field(default_factory=IdlePolicy)
    cap_numbers: dict[str, int] = field(default_factory=dict)  # out-of-tree capability numbers by name
    api_socket: Path | None = None
    stats_json: Path | None = None
    measure: bool = False  # sample statistics and report them (RunResult.report, with any warnings) without any file

    @property
    def active(self) -> bool:
        return (self.policy != IdlePolicy() or bool(self.cap_numbers) or self.api_socket is not None
                or self.stats_json is not None or self.measure)


@dataclass
class TestingSpec:
    """Console checks, a deadline, and `-- CMD` (boot an initramfs built around a command; pyvmm.vmm.checks, pyvmm.initramfs.feature)."""

    timeout: float | None = None  # seconds
    expect: re.Pattern[str] | None = None
    fail_on: re.Pattern[str] | None = None
    command: list[str] = field(default_factory=list)
    adds: list[str] = field(default_factory=list)  # HOST:GUEST files for the command's initramfs
    busybox: Path | None = None

    @property
    def active(self) -> bool:
        return self.timeout is not None or self.expect is not None or self.fail_on is not None or bool(self.command)


@dataclass
class VmSpec:
    """Everything needed to build and run one VM."""

    name: str = ""  # what `pyvmm list` shows and `pyvmm ctl NAME` finds (pyvmm.api.registry)
    kernel: Path | None = None  # None: the bundled hello guest; a bundled guest by name unless such a file exists
    initrd: Path | None = None
    cmdline: str = ""
    memory: int = 256 * MIB
    cpus: int = 1
    arch: str = ""  # "": the host's architecture (filled by validate)
    guest_args: list[int] = field(default_factory=list)
    irqchip: str = "auto"  # arm64: IRQCHIPS
    pmu: bool = False  # arm64: a PMUv3 for the guest (KVM_ARM_VCPU_PMU_V3)
    nodefaults: bool = False  # the kernel command line exactly as given: no console settings added
    on_reboot: str = "exit"  # exit | restart
    dtb_dump: Path | None = None
    debug: bool = False
    console: ConsoleSpec = field(default_factory=ConsoleSpec)
    devices: list[DeviceConfig] = field(default_factory=list)  # virtio devices, in the order given
    idle: IdleSpec = field(default_factory=IdleSpec)
    testing: TestingSpec = field(default_factory=TestingSpec)

    @property
    def hide_pv_unhalt(self) -> bool:
        """x86: with HLT passthrough, advertising KVM_FEATURE_PV_UNHALT makes some (nested) hosts fail KVM entry."""
        return "hlt" in self.idle.policy.idle_exits

    def validate(self) -> "VmSpec":
        """Reject what can never work, with one-line messages that say what to do instead. Returns the spec."""
        if not self.arch:
            from pyvmm.arch import host_arch

            self.arch = host_arch()
        if self.kernel is not None:
            import pyvmm_guests

            self.kernel = pyvmm_guests.resolve(self.kernel, self.arch)
        self._validate_core()
        self._validate_for_arch()
        if self.devices:
            from pyvmm.devices.virtio.config import validate_devices

            validate_devices(self.devices)
        check_affinity(self.idle.policy.cpu_affinity, self.cpus)
        self._validate_testing()
        self._validate_files()  # last: the option values themselves are wrong first
        return self

    def _validate_core(self) -> None:
        if self.cpus < 1:
            raise UsageError(f"--cpus must be at least 1 (got {self.cpus})")
        if self.cpus > MAX_CPUS:
            raise UsageError(f"--cpus {self.cpus} is absurd for pyvmm: at most {MAX_CPUS} (and KVM's own limit)")
        if self.memory < MIN_MEMORY:
            raise UsageError(f"--memory {format_size(self.memory)} is too small: at least {format_size(MIN_MEMORY)}")
        host = host_memory_bytes()
        if self.memory > host:
            raise UsageError(
                f"--memory {format_size(self.memory)} is more than this host has ({host // MIB}M): ask for less"
            )
        if self.on_reboot not in ("exit", "restart"):
            raise UsageError(f"--on-reboot must be exit or restart (got {self.on_reboot!r})")
        if self.irqchip not in IRQCHIPS:
            raise UsageError(f"--irqchip must be {', '.join(IRQCHIPS[:-1])} or {IRQCHIPS[-1]} (got {self.irqchip!r})")
        if self.arch != "arm64" and (self.pmu or self.irqchip == "gicv3-its"):
            what = "--pmu" if self.pmu else "--irqchip gicv3-its"
            raise UsageError(f"{what} is for arm64 guests (this is {self.arch})")
        for value in self.guest_args:
            if not 0 <= value < 1 << 32:
                raise UsageError(f"--guest-arg {value} does not fit in 32 bits")

    def _validate_for_arch(self) -> None:
        """Options that would do nothing on this architecture are refused rather than silently ignored."""
        if self.arch != "x86_64":
            return
        if self.dtb_dump is not None:
            raise UsageError("--dump-dtb: an x86_64 machine has no device tree, so there is nothing to write "
                             "(docs/MACHINES.md describes its devices)")

    def ignored(self) -> list[str]:
        """What this spec asks for that the machine will ignore, as kvmtool does (one warning each, by the runner)."""
        if self.arch == "x86_64" and self.cmdline.removesuffix(VIRTIO_CONSOLE_PARAMS).strip():
            return ["-p/--append is ignored: an x86_64 guest is a flat payload, which has no kernel command line "
                    "(pyvmm boots Linux on arm64 only); pass values with --guest-arg"]
        return []

    def _validate_files(self) -> None:
        """Inputs are regular files the VM can hold, outputs regular or new files: checked before any is created."""
        from pyvmm.api.server import check_path
        from pyvmm.spec import files

        for path, option in ((self.kernel, "--kernel"), (self.initrd, "--initrd"), (self.testing.busybox, "--busybox")):
            if path is not None:
                files.input_file(path, option, self.memory)
        for path, option in ((self.console.log_path, "--console-log"), (self.idle.stats_json, "--stats-json"),
                             (self.dtb_dump, "--dump-dtb")):
            if path is not None:
                files.output_file(path, option)
        if self.idle.api_socket is not None:
            check_path(str(self.idle.api_socket))
        if not self.devices:
            return
        from pyvmm.devices.virtio.config import DiskConfig

        seen: dict[tuple[int, int], Path] = {}
        for disk in (d for d in self.devices if isinstance(d, DiskConfig)):
            info = files.disk_file(disk.path, "--disk")
            key = (info.st_dev, info.st_ino)  # the same file by any name or link
            if key in seen:
                raise UsageError(f"--disk {disk.path} is given twice (also as {seen[key]})")
            seen[key] = disk.path

    def _validate_testing(self) -> None:
        testing = self.testing
        if testing.timeout is not None and not 0 < testing.timeout <= MAX_TIMEOUT:
            raise UsageError(f"--timeout must be more than 0 seconds and at most {MAX_TIMEOUT:g} "
                             f"(got {testing.timeout:g})")
        if (testing.adds or testing.busybox) and not testing.command:
            raise UsageError("--add and --busybox only apply to `pyvmm run --kernel Image -- CMD ARGS...`")
        if not testing.command:
            return
        if self.kernel is None:
            raise UsageError("-- CMD needs a Linux kernel: give --kernel Image")
        if self.initrd is not None:
            raise UsageError("--initrd cannot be combined with -- CMD: pyvmm builds the initramfs (use --add for files)")
        if self.arch != "arm64":
            raise UsageError(f"-- CMD boots Linux, which pyvmm supports on arm64 only (this is {self.arch})")
