"""The host facts every idle report carries, because they change what its figures mean: the preemption
model (the review's suggested alternative to a per-VM threshold), whether the CPUs differ (objection (c),
big.LITTLE), and whether idle-state residency can be measured at all (objection (d)). Also the warning for
objection (e): a runqueue-depth threshold on vCPUs that the scheduler is free to move.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pyvmm.idle.cpuidle import snapshot
from pyvmm.idle.hostcpus import HostCpus, read_host_cpus
from pyvmm.idle.hostsched import Preemption, read_preemption


@dataclass(frozen=True)
class HostContext:
    preemption: Preemption
    cpus: HostCpus
    cpuidle: str  # "cpuidle driver X", or "not exposed: why"

    def as_dict(self) -> dict:
        return {"preemption": self.preemption.as_dict(), "cpus": self.cpus.as_dict(), "cpuidle": self.cpuidle}

    def render(self) -> list[str]:
        return [f"preemption: {self.preemption.describe()}",
                f"CPUs: online {self.cpus.as_dict()['online']}, {self.cpus.describe()}",
                f"idle states: {self.cpuidle}"]


def read_host_context(root: Path | str = "/") -> HostContext:
    cpus = read_host_cpus(root)
    return HostContext(read_preemption(root), cpus, snapshot(sorted(cpus.online)[:1], root).reason)


def unpinned_threshold_warning(threshold: int | None, vcpus: int, affinity: Mapping[int, set[int]]) -> str | None:
    """A warning when a WFx threshold is set while some vCPU is not pinned to exactly one host CPU, else None.

    The threshold is compared with the number of tasks on the CPU the vCPU happens to be loaded on; an
    unpinned vCPU migrates, so which tasks it is counted with, and whether its WFIs trap, changes with it.
    Threshold 0 traps always (the vCPU itself counts), whatever the runqueue: no warning.
    """
    if not threshold:
        return None
    loose = [i for i in range(vcpus) if len(affinity.get(i, ())) != 1]
    if not loose:
        return None
    which = ", ".join(str(i) for i in loose)
    example = ",".join(f"{i}=CPU" for i in loose[:2])
    return (f"warning: WFx trap threshold {threshold} counts the tasks on each vCPU's host CPU, but vCPU "
            f"{which} {'is' if len(loose) == 1 else 'are'} not pinned to one CPU, so that count (and whether "
            f"WFIs trap) follows the scheduler's placement; pin with --cpu-affinity {example}")
