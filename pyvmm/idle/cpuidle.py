"""Host idle-state residency of given CPUs over an interval (objection (d) of the WFx patch review: a guest
idling in an untrapped WFI keeps its host CPU out of deep idle states).

Source: /sys/devices/system/cpu/cpuN/cpuidle/stateK/{name,time,usage}; `time` is the cumulative
microseconds spent in the state, `usage` the number of entries. Those directories exist only when a cpuidle
driver is bound (/sys/devices/system/cpu/cpuidle/current_driver); the emulated arm64 host (QEMU virt
describes no idle states) has none, and x86 guests often have none. Then the result says "not exposed" and
why, never a row of zeros that would read as "the CPU never idled".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pyvmm.idle.hostcpus import CPU_DIR, read_text


@dataclass(frozen=True)
class StateCounters:
    name: str
    time_us: int
    usage: int


@dataclass(frozen=True)
class IdleSnapshot:
    """Counters of every idle state of each CPU at one moment; `states` is None when not exposed."""

    states: dict[int, list[StateCounters]] | None
    reason: str  # the driver in use, or why nothing is exposed


def _why_not_exposed(root: Path | str) -> str:
    driver = read_text(root, f"{CPU_DIR}/cpuidle/current_driver")
    if driver is None:
        if not (Path(root) / CPU_DIR / "cpuidle").exists():
            return "not exposed: kernel without CONFIG_CPU_IDLE (no /sys/devices/system/cpu/cpuidle)"
        return "not exposed: /sys/devices/system/cpu/cpuidle/current_driver not readable"
    if driver.strip() in ("", "none"):
        return "not exposed: no cpuidle driver bound (current_driver: none; the firmware describes no idle states)"
    return f"not exposed: cpuidle driver {driver.strip()} registers no idle states for this CPU"


def snapshot(cpus: Iterable[int], root: Path | str = "/") -> IdleSnapshot:
    states: dict[int, list[StateCounters]] = {}
    for cpu in cpus:
        base = Path(root) / CPU_DIR / f"cpu{cpu}" / "cpuidle"
        dirs = sorted((d for d in base.glob("state*") if re.fullmatch(r"state\d+", d.name)),
                      key=lambda d: int(d.name[5:])) if base.is_dir() else []
        found = []
        for d in dirs:
            name, t, u = (read_text(d, f) for f in ("name", "time", "usage"))
            if name is None or t is None or u is None:
                continue
            try:
                found.append(StateCounters(name.strip(), int(t), int(u)))
            except ValueError:
                continue
        if not found:
            return IdleSnapshot(None, _why_not_exposed(root) if not base.is_dir() else
                                f"not exposed: no readable idle states in /{CPU_DIR}/cpu{cpu}/cpuidle")
        states[cpu] = found
    driver = (read_text(root, f"{CPU_DIR}/cpuidle/current_driver") or "unknown").strip()
    return IdleSnapshot(states, f"cpuidle driver {driver}")


@dataclass(frozen=True)
class StateResidency:
    name: str
    seconds: float
    entries: int
    share: float  # of the interval, 0..1


@dataclass(frozen=True)
class IdleResidency:
    """Per CPU, the time spent in each idle state over an interval; `cpus` is None when not exposed."""

    cpus: dict[int, list[StateResidency]] | None
    reason: str

    @property
    def exposed(self) -> bool:
        return self.cpus is not None

    def deepest_share(self) -> float | None:
        """Mean over the CPUs of the share of time in their deepest state (the one the review is about)."""
        if not self.cpus:
            return None
        shares = [states[-1].share for states in self.cpus.values() if states]
        return sum(shares) / len(shares) if shares else None

    def idle_share(self) -> float | None:
        """Mean over the CPUs of the share of time in any idle state."""
        if not self.cpus:
            return None
        return sum(sum(s.share for s in states) for states in self.cpus.values()) / len(self.cpus)

    def as_dict(self) -> dict:
        if self.cpus is None:
            return {"exposed": False, "reason": self.reason}
        return {"exposed": True, "reason": self.reason,
                "cpus": {str(c): [{"state": s.name, "seconds": s.seconds, "entries": s.entries, "share": s.share}
                                  for s in states] for c, states in sorted(self.cpus.items())}}


def residency(before: IdleSnapshot, after: IdleSnapshot, interval_s: float) -> IdleResidency:
    if before.states is None or after.states is None:
        return IdleResidency(None, before.reason if before.states is None else after.reason)
    if interval_s <= 0:
        raise ValueError(f"interval must be positive, got {interval_s}")
    out: dict[int, list[StateResidency]] = {}
    for cpu, b_states in before.states.items():
        a_states = {s.name: s for s in after.states.get(cpu, [])}
        rows = []
        for b in b_states:
            a = a_states.get(b.name)
            if a is None:
                continue
            secs = max(0, a.time_us - b.time_us) / 1e6
            rows.append(StateResidency(b.name, secs, max(0, a.usage - b.usage), min(1.0, secs / interval_s)))
        out[cpu] = rows
    return IdleResidency(out, before.reason)
