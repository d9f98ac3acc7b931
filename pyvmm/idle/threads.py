"""Per-thread host CPU accounting and pinning: the measurements that make a WFx/HLT passthrough
decision checkable (wfx.md: a passed-through idle vCPU looks 100% busy). Runqueue depth and the
scheduler's load signals are pyvmm.idle.hostsched.

Sources: /proc/<pid>/task/<tid>/stat (utime, stime, processor = field 39) and .../schedstat
(run/wait ns; needs CONFIG_SCHED_INFO). Anything unreadable is reported as such, never guessed silently.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class ThreadStatError(OSError):
    """A thread's /proc entry is missing or unparsable (the thread may have exited)."""


@dataclass(frozen=True)
class ThreadTimes:
    """CPU time consumed by one thread up to `monotonic_ns`."""

    tid: int
    utime_s: float  # guest time is included in utime by the kernel
    stime_s: float
    last_cpu: int  # field 39: the CPU it last ran on
    state: str  # R, S, D, ...
    run_ns: int | None  # schedstat: time on CPU (ns precision); None when not available
    wait_ns: int | None  # schedstat: time runnable but waiting on a runqueue
    timeslices: int | None
    monotonic_ns: int

    @property
    def cpu_s(self) -> float:
        """Best CPU time: schedstat's ns counter if present, else utime+stime (tick precision)."""
        return self.run_ns / 1e9 if self.run_ns is not None else self.utime_s + self.stime_s


def parse_task_stat(text: str) -> tuple[str, float, float, int]:
    """(state, utime_s, stime_s, processor) from a /proc/.../stat line.

    comm (field 2) may contain spaces and ')' so split after the LAST ')'.
    """
    r = text.rfind(")")
    if r < 0:
        raise ThreadStatError(f"stat line has no ')' after comm: {text[:60]!r}")
    rest = text[r + 2 :].split()  # rest[0] is field 3 (state)
    if len(rest) < 37:
        raise ThreadStatError(f"stat line has {len(rest) + 2} fields, need >= 39")
    try:
        return (rest[0], int(rest[14 - 3]) / _CLK_TCK, int(rest[15 - 3]) / _CLK_TCK, int(rest[39 - 3]))
    except ValueError as e:
        raise ThreadStatError(f"stat line field not numeric: {e}") from None


def parse_schedstat(text: str) -> tuple[int, int, int]:
    """(run_ns, wait_ns, timeslices) from /proc/.../schedstat."""
    parts = text.split()
    if len(parts) < 3:
        raise ThreadStatError(f"schedstat has {len(parts)} fields, need 3: {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _task_dir(tid: int, pid: int | None) -> str:
    return f"/proc/{'self' if pid is None else pid}/task/{tid}"


def thread_times(tid: int, pid: int | None = None) -> ThreadTimes:
    """CPU times of thread `tid` (of this process unless `pid` is given)."""
    d = _task_dir(tid, pid)
    try:
        with open(f"{d}/stat") as f:
            stat = f.read()
    except OSError as e:
        raise ThreadStatError(e.errno, f"thread {tid}: cannot read {d}/stat ({e.strerror})") from None
    state, ut, st, cpu = parse_task_stat(stat)
    run = wait = slices = None
    try:
        with open(f"{d}/schedstat") as f:
            run, wait, slices = parse_schedstat(f.read())
    except OSError:
        pass  # kernel without CONFIG_SCHED_INFO: fall back to tick-based utime+stime
    return ThreadTimes(tid, ut, st, cpu, state, run, wait, slices, time.monotonic_ns())


@dataclass(frozen=True)
class ThreadUsage:
    """Usage of one thread over an interval."""

    tid: int
    interval_s: float
    cpu_s: float
    cpu_fraction: float  # 1.0 = one host CPU fully busy (e.g. a vCPU idling in a passed-through WFI)
    wait_s: float | None  # time runnable but not running: contention on its CPU
    cpus_seen: tuple[int, ...]  # last CPU at start and end


def usage(before: ThreadTimes, after: ThreadTimes) -> ThreadUsage:
    if before.tid != after.tid:
        raise ValueError(f"samples of different threads {before.tid} and {after.tid}")
    dt = (after.monotonic_ns - before.monotonic_ns) / 1e9
    if dt <= 0:
        raise ValueError(f"interval must be positive, got {dt:.9f} s")
    cpu = after.cpu_s - before.cpu_s
    wait = (after.wait_ns - before.wait_ns) / 1e9 if (
        after.wait_ns is not None and before.wait_ns is not None) else None
    return ThreadUsage(after.tid, dt, cpu, cpu / dt, wait,
                       tuple(dict.fromkeys((before.last_cpu, after.last_cpu))))


def set_affinity(tid: int, cpus: Iterable[int]) -> set[int]:
    """Pin a thread (native TID) to `cpus`; returns the affinity the kernel applied."""
    os.sched_setaffinity(tid, set(cpus))
    return get_affinity(tid)


def get_affinity(tid: int) -> set[int]:
    return set(os.sched_getaffinity(tid))
