"""Per-thread host CPU accounting, pinning and runqueue depth: the measurements that make a
WFx/HLT passthrough decision checkable (wfx.md: a passed-through idle vCPU looks 100% busy,
and a runqueue-depth threshold depends on how many tasks share the vCPU's CPU).

Sources: /proc/<pid>/task/<tid>/stat (utime, stime, processor = field 39), .../schedstat
(run/wait ns; needs CONFIG_SCHED_INFO), /proc/schedstat (per-CPU run_delay), and the
scheduler debug file (per-CPU nr_running; /sys/kernel/debug/sched/debug since 5.13, earlier
/proc/sched_debug). Anything unreadable is reported as such, never guessed silently.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Iterable

_CLK_TCK = os.sysconf("SC_CLK_TCK")
SCHED_DEBUG_PATHS = ("/sys/kernel/debug/sched/debug", "/proc/sched_debug")


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


# ---------------------------------------------------------------------------------------------
# Runqueue depth


@dataclass(frozen=True)
class RunqueueSample:
    """nr_running of one CPU, or why it is not known."""

    cpu: int
    nr_running: int | None
    source: str  # the file it came from, or the reason it is unavailable
    run_delay_ns: int | None = None  # /proc/schedstat: total time tasks waited on this runqueue


def parse_sched_debug(text: str) -> dict[int, int]:
    """{cpu: nr_running} from the scheduler debug file ("cpu#N" sections, ".nr_running : X").

    Only the first .nr_running after each cpu#N header is the runqueue's (cfs_rq sections
    repeat the key further down).
    """
    out: dict[int, int] = {}
    cpu: int | None = None
    for line in text.splitlines():
        m = re.match(r"cpu#(\d+)", line)
        if m:
            cpu = int(m.group(1))
            continue
        m = re.match(r"\s*\.nr_running\s*:\s*(\d+)", line)
        if m and cpu is not None and cpu not in out:
            out[cpu] = int(m.group(1))
    return out


def parse_proc_schedstat(text: str) -> dict[int, int]:
    """{cpu: run_delay_ns} from /proc/schedstat (cpuN lines: field 8 after the name)."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and re.fullmatch(r"cpu\d+", parts[0]) and len(parts) >= 9:
            out[int(parts[0][3:])] = int(parts[8])
    return out


def runqueue_depths(cpus: Iterable[int]) -> list[RunqueueSample]:
    """nr_running for each CPU in `cpus`, from the scheduler debug file when readable.

    /proc/schedstat has no nr_running, only wait totals, which are attached when readable.
    When no source is readable (debugfs not mounted, not root, CONFIG_SCHED_DEBUG off), each
    sample says so explicitly with nr_running None.
    """
    wanted = list(cpus)
    delays: dict[int, int] = {}
    try:
        with open("/proc/schedstat") as f:
            delays = parse_proc_schedstat(f.read())
    except OSError:
        pass
    for path in SCHED_DEBUG_PATHS:
        try:
            with open(path) as f:
                depths = parse_sched_debug(f.read())
        except OSError:
            continue
        return [RunqueueSample(c, depths.get(c), path if c in depths else f"cpu {c} not in {path}",
                               delays.get(c)) for c in wanted]
    why = ("unavailable: neither " + " nor ".join(SCHED_DEBUG_PATHS) +
           " is readable (mount debugfs and run as root, kernel needs CONFIG_SCHED_DEBUG)")
    return [RunqueueSample(c, None, why, delays.get(c)) for c in wanted]
