"""A run's view from the host: while the vCPUs run, the runqueue depth of their host CPUs, their threads' PELT
signals and the idle-state residency of those CPUs (pyvmm.idle.hostsched, pyvmm.idle.cpuidle).

`HostObserver` is a feature of a run (pyvmm.vmm.runner): it starts when every vCPU thread runs (after the idle
policy has pinned them) and stops when the VM is asked to stop. It also keeps the process's own other threads
(the runner, the control socket, samplers) off the vCPUs' CPUs for the run, as an administrator would: measured
in the lane, a single control-socket thread woken beside a pinned vCPU made 12 of 142 WFIs trap under
threshold 1 with no other load, so without this the bench would measure its own interference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from pyvmm.idle.cpuidle import IdleResidency, IdleSnapshot, residency, snapshot
from pyvmm.idle.hostcpus import format_cpus
from pyvmm.idle.hostsched import SchedObservation, SchedSampler

if TYPE_CHECKING:
    from pyvmm.vmm.vmm import Vmm


@dataclass(frozen=True)
class HostObservation:
    cpus: tuple[int, ...]  # the vCPUs' host CPUs (all they may run on)
    pinned: bool  # every vCPU on exactly one CPU
    sched: SchedObservation
    idle: IdleResidency
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"cpus": format_cpus(set(self.cpus)), "pinned": self.pinned, "sched": self.sched.as_dict(),
                "idle": self.idle.as_dict(), "notes": list(self.notes)}


class HostObserver:
    def __init__(self, *, interval_s: float = 0.05, root: Path | str = "/", keep_threads_off: bool = True) -> None:
        self.interval_s = interval_s
        self.root = root
        self.keep_threads_off = keep_threads_off
        self.observation: HostObservation | None = None
        self._sampler: SchedSampler | None = None
        self._idle_before: IdleSnapshot | None = None
        self._moved: dict[int, set[int]] = {}  # tid -> affinity before the run
        self._cpus: tuple[int, ...] = ()
        self._pinned = False
        self._notes: list[str] = []

    def subscribe(self, vmm: "Vmm") -> None:
        vmm.events.started.subscribe(lambda v: self.start(v.machine.vcpus))
        vmm.events.stopping.subscribe(lambda outcome: self.stop())

    def start(self, vcpus: Iterable[Any]) -> None:
        """Begin observing the vCPU threads (objects with `index` and `thread_id`). Once per run."""
        if self._sampler is not None or self.observation is not None:
            return  # a restarted boot: the first one is the run's
        tids, affinities = [], []
        for v in vcpus:
            try:
                affinities.append(os.sched_getaffinity(v.thread_id))
                tids.append(v.thread_id)
            except (OSError, TypeError):  # a very short guest may be done before the VM counts as started
                self._notes.append(f"vCPU {v.index}'s thread ended before it could be observed")
        cpus: set[int] = set().union(*affinities) if affinities else set()
        self._cpus = tuple(sorted(cpus))
        self._pinned = bool(affinities) and all(len(a) == 1 for a in affinities)
        if affinities and not self._pinned:
            self._notes.append(f"vCPUs not pinned to one CPU each: runqueue and idle figures cover CPUs "
                               f"{format_cpus(cpus)}")
        if self.keep_threads_off and self._pinned:
            self._move_other_threads(set(tids), cpus)
        self._sampler = SchedSampler(cpus, interval_s=self.interval_s, root=self.root)
        for t in tids:
            self._sampler.watch(t)
        self._idle_before = snapshot(self._cpus, self.root)
        self._sampler.__enter__()

    def _move_other_threads(self, vcpu_tids: set[int], cpus: set[int]) -> None:
        allowed = os.sched_getaffinity(0) - cpus
        if not allowed:
            self._notes.append(f"no CPU outside {format_cpus(cpus)}: pyvmm's other threads share the vCPUs' CPUs")
            return
        for entry in os.scandir("/proc/self/task"):
            tid = int(entry.name)
            if tid in vcpu_tids:
                continue
            try:
                before = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, before & allowed or allowed)
                self._moved[tid] = before
            except OSError:
                continue  # the thread ended meanwhile

    def stop(self) -> None:
        """End the interval (idempotent)."""
        sampler, self._sampler = self._sampler, None
        if sampler is None:
            return
        sampler.__exit__(None, None, None)
        sched = sampler.observation
        assert sched is not None and self._idle_before is not None
        idle = residency(self._idle_before, snapshot(self._cpus, self.root), sched.interval_s)
        self.observation = HostObservation(self._cpus, self._pinned, sched, idle, tuple(self._notes))

    def close(self) -> None:
        """Stop observing and give the moved threads their affinity back."""
        self.stop()
        moved, self._moved = self._moved, {}
        for tid, cpus in moved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                continue  # ended with the run
