"""The host's CPUs as sysfs describes them: which exist and are online, and whether they differ.

Why: a per-VM WFx threshold counts the tasks on the vCPU's host CPU, so pinning (and busy tasks placed
beside a vCPU) must name CPUs that exist and are online; and on a heterogeneous (big.LITTLE) host the same
trapping decision costs differently on each kind of CPU (objection (c) of the WFx patch review), so every
report says whether CPUs differ, by capacity (/sys/devices/system/cpu/cpuN/cpu_capacity, arm64 and x86
hybrid) or by core type (MIDR_EL1 part number, arm64 only).

Every reader takes `root` (default "/") so tests run against a fake sysfs tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyvmm.errors import UsageError

CPU_DIR = "sys/devices/system/cpu"


class HostCpuError(UsageError):
    """A CPU named by the user does not exist or is offline on this host (one-line message)."""


def read_text(root: Path | str, rel: str) -> str | None:
    """Contents of root/rel, or None when it cannot be read (absent, no permission, not a file)."""
    try:
        return (Path(root) / rel).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def parse_cpu_ranges(text: str) -> frozenset[int]:
    """sysfs cpulist ("0-3,5\\n"; "" or "\\n" = none) -> CPU numbers. Raises ValueError when malformed."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        a, b = int(lo), int(hi) if sep else int(lo)
        if a < 0 or b < a:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(a, b + 1))
    return frozenset(cpus)


def format_cpus(cpus: set[int] | frozenset[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5" (the kernel's cpulist syntax)."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "none"


@dataclass(frozen=True)
class Midr:
    """The fields of MIDR_EL1 that tell core types apart (revision ignored: same core, other stepping)."""

    implementer: int
    variant: int
    part: int

    @classmethod
    def parse(cls, text: str) -> Midr:
        v = int(text.strip(), 16)
        return cls((v >> 24) & 0xFF, (v >> 20) & 0xF, (v >> 4) & 0xFFF)

    def __str__(self) -> str:
        return f"{self.implementer:#04x}:{self.part:#05x}"


@dataclass(frozen=True)
class HostCpus:
    """Existing (present) and online CPUs, and what tells them apart. Missing sysfs items are None."""

    present: frozenset[int]
    online: frozenset[int]
    capacity: dict[int, int | None] = field(default_factory=dict)  # cpu_capacity, 1024 = the biggest CPU
    midr: dict[int, Midr | None] = field(default_factory=dict)  # arm64 only

    @property
    def heterogeneous(self) -> bool | None:
        """True when capacities or core types differ across online CPUs; None when neither is exposed."""
        caps = {v for v in self.capacity.values() if v is not None}
        parts = {(m.implementer, m.part) for m in self.midr.values() if m is not None}
        if not caps and not parts:
            return None
        return len(caps) > 1 or len(parts) > 1

    def describe(self) -> str:
        """One line: "heterogeneous: capacity 1024 on 4-7, 446 on 0-3" or "homogeneous (...)"."""
        het = self.heterogeneous
        if het is None:
            return "unknown (no cpu_capacity or MIDR in sysfs)"
        details = []
        for what, values in (("capacity", self.capacity), ("core", self.midr)):
            groups: dict[str, set[int]] = {}
            for cpu, v in values.items():
                if v is not None:
                    groups.setdefault(str(v), set()).add(cpu)
            if groups:
                details.append(", ".join(f"{what} {k} on {format_cpus(c)}" for k, c in sorted(groups.items())))
        return ("heterogeneous: " if het else "homogeneous: ") + "; ".join(details)

    def as_dict(self) -> dict:
        return {"present": format_cpus(self.present), "online": format_cpus(self.online),
                "heterogeneous": self.heterogeneous, "description": self.describe(),
                "capacity": {str(c): v for c, v in sorted(self.capacity.items())},
                "midr": {str(c): None if m is None else str(m) for c, m in sorted(self.midr.items())}}

    def check(self, cpus: set[int] | frozenset[int], what: str) -> None:
        """Raise HostCpuError (one line) for a CPU in `cpus` that does not exist or is offline."""
        missing = sorted(set(cpus) - self.present)
        if missing:
            raise HostCpuError(f"{what}: CPU {format_cpus(set(missing))} does not exist on this host "
                               f"(CPUs {format_cpus(self.present)})")
        offline = sorted(set(cpus) - self.online)
        if offline:
            raise HostCpuError(f"{what}: CPU {format_cpus(set(offline))} is offline "
                               f"(online: {format_cpus(self.online)})")


def _cpulist(root: Path | str, name: str) -> frozenset[int] | None:
    text = read_text(root, f"{CPU_DIR}/{name}")
    try:
        return None if text is None else parse_cpu_ranges(text)
    except ValueError:
        return None


def read_host_cpus(root: Path | str = "/") -> HostCpus:
    """Read /sys/devices/system/cpu. Without it (odd containers), the CPUs this process may use stand in."""
    import os

    present = _cpulist(root, "present")
    online = _cpulist(root, "online")
    if present is None:
        present = online if online is not None else frozenset(os.sched_getaffinity(0))
    if online is None:
        online = present
    capacity: dict[int, int | None] = {}
    midr: dict[int, Midr | None] = {}
    for cpu in sorted(online):
        text = read_text(root, f"{CPU_DIR}/cpu{cpu}/cpu_capacity")
        capacity[cpu] = int(text) if text and text.strip().isdigit() else None
        text = read_text(root, f"{CPU_DIR}/cpu{cpu}/regs/identification/midr_el1")
        try:
            midr[cpu] = Midr.parse(text) if text else None
        except ValueError:
            midr[cpu] = None
    # A kind of item no CPU exposes is left out entirely: "not exposed" rather than a column of unknowns.
    return HostCpus(present, online, capacity if any(v is not None for v in capacity.values()) else {},
                    midr if any(m is not None for m in midr.values()) else {})
