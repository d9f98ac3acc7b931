"""What the host scheduler sees of a VM: runqueue depth of the vCPUs' CPUs, the vCPU threads' load
signals (PELT), and the host's preemption model.

These are the figures behind the WFx patch review's objections: (a) a vCPU idling in an untrapped WFI
looks 100% busy, which shows in its PELT `se.avg.util_avg` (0..1024); (b)/(e) the per-VM threshold acts
on the runqueue depth of the vCPU's CPU, which userspace hardly controls, so it is measured, not assumed;
and the preemption model was the reviewers' suggested alternative.

Sources, and which is exact:
- runqueue depth, sampled: `.nr_running` of each `cpu#N` section of the scheduler debug file
  (/sys/kernel/debug/sched/debug; CONFIG_SCHED_DEBUG, debugfs mounted, root). Exact at each sample (the
  value KVM compares with the threshold at vcpu_load), but only a sample: ticks between two reads are not
  seen. Reported as mean and max over the samples.
- runqueue depth, time average: from /proc/schedstat (CONFIG_SCHEDSTATS), (delta rq_cpu_time + delta
  run_delay) / elapsed: time tasks spent running plus waiting on that CPU per second, i.e. the mean number of
  runnable tasks. Exact as an integral, no root needed, but the kernel adds a task's share when it is
  switched out, so a task that never leaves the CPU during the interval is missing from it.
- PELT: `se.avg.util_avg`, `se.avg.load_avg`, `se.avg.runnable_avg` in /proc/<pid>/task/<tid>/sched
  (CONFIG_SCHED_DEBUG; the file does not exist otherwise). Sampled; each is itself a decaying average
  (~32 ms half-life), so the mean of samples over a run is the run's signal.
- preemption: /sys/kernel/debug/sched/preempt (PREEMPT_DYNAMIC kernels only: "none voluntary (full)"
  marks the current mode), else the uname -v tokens (/proc/sys/kernel/version), else the kernel config.

Every reader takes `root` (default "/") so tests run against a fake /proc and /sys tree. Nothing here
guesses: what a kernel does not expose comes back as None with the reason.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pyvmm.idle.host import parse_cmdline, parse_preempt_config, parse_preempt_debugfs
from pyvmm.idle.hostcpus import read_text
from pyvmm.idle.threads import parse_sched_debug

SCHED_DEBUG = "sys/kernel/debug/sched/debug"
PREEMPT_DEBUGFS = "sys/kernel/debug/sched/preempt"
PROC_SCHEDSTAT = "proc/schedstat"

# ---------------------------------------------------------------------------------------------
# Preemption model


@dataclass(frozen=True)
class Preemption:
    """The preemption model the kernel was built with and the mode in force now.

    build: none, voluntary, full, lazy, rt, dynamic (mode chosen at boot or at run time), or
    none-or-voluntary (only the config could tell), None when unknown. mode: what applies now
    (for a non-dynamic build, the build itself); None when a dynamic kernel does not say.
    """

    build: str | None
    mode: str | None
    source: str

    def describe(self) -> str:
        if self.build == "dynamic":
            return f"dynamic, current mode {self.mode or 'unknown'} ({self.source})"
        return f"{self.build or 'unknown'} ({self.source})"

    def as_dict(self) -> dict:
        return {"build": self.build, "mode": self.mode, "source": self.source, "description": self.describe()}


def parse_version_tokens(version: str) -> str | None:
    """Build model from uname -v ("#1 SMP PREEMPT_DYNAMIC Debian ..."); None: no PREEMPT token."""
    tokens = version.split()
    for token, model in (("PREEMPT_RT", "rt"), ("PREEMPT_DYNAMIC", "dynamic"), ("PREEMPT_LAZY", "lazy"),
                         ("PREEMPT", "full")):
        if token in tokens:
            return model
    return None


def read_preemption(root: Path | str = "/") -> Preemption:
    """debugfs (exact current mode) > uname -v > /boot/config-RELEASE, in that order."""
    text = read_text(root, PREEMPT_DEBUGFS)
    if text and (mode := parse_preempt_debugfs(text)):
        return Preemption("dynamic", mode, f"/{PREEMPT_DEBUGFS}")
    release = (read_text(root, "proc/sys/kernel/osrelease") or "").strip()
    config = read_text(root, f"boot/config-{release}") if release else None
    cmdline = parse_cmdline(read_text(root, "proc/cmdline") or "")
    build = parse_version_tokens(read_text(root, "proc/sys/kernel/version") or "")
    if build == "dynamic":
        if "preempt" in cmdline:
            return Preemption(build, cmdline["preempt"], "uname -v PREEMPT_DYNAMIC, preempt= on /proc/cmdline")
        # Without preempt=, the mode is the config's PREEMPT choice (its default for dynamic kernels).
        default = _config_choice(config)
        if default is not None:
            return Preemption(build, default, f"uname -v PREEMPT_DYNAMIC, default from /boot/config-{release} "
                                              f"(debugfs sched/preempt not readable: it would show a change)")
        return Preemption(build, None, "uname -v PREEMPT_DYNAMIC; mode unknown: debugfs sched/preempt not "
                                       "readable (mount debugfs, run as root)")
    if build is not None:
        return Preemption(build, build, "uname -v")
    model = _config_choice(config)
    if model is not None:
        return Preemption(model, model, f"/boot/config-{release}")
    # uname -v names every preemptible build; no token means one of the two non-preemptible ones.
    return Preemption("none-or-voluntary", None, "uname -v has no PREEMPT token and no kernel config is readable")


def _config_choice(config: str | None) -> str | None:
    """The CONFIG_PREEMPT_{NONE,VOLUNTARY,} choice, ignoring PREEMPT_DYNAMIC (which is not a mode)."""
    if config is None:
        return None
    model = parse_preempt_config(config.replace("CONFIG_PREEMPT_DYNAMIC=y", ""))
    return None if model == "rt" else model


# ---------------------------------------------------------------------------------------------
# Point readings


@dataclass(frozen=True)
class CpuSchedstat:
    """One CPU's line of /proc/schedstat: cumulative ns of tasks running on it and waiting on its runqueue."""

    running_ns: int
    waiting_ns: int


def parse_cpu_schedstat(text: str) -> dict[int, CpuSchedstat]:
    """{cpu: CpuSchedstat} from /proc/schedstat (version 15-17: "cpuN" then 9 fields; 7th running, 8th waiting)."""
    out: dict[int, CpuSchedstat] = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and re.fullmatch(r"cpu\d+", parts[0]) and len(parts) >= 9:
            out[int(parts[0][3:])] = CpuSchedstat(int(parts[7]), int(parts[8]))
    return out


@dataclass(frozen=True)
class Pelt:
    """A thread's PELT signals (0..1024 for util and runnable; load is weighted by nice level)."""

    util_avg: int
    load_avg: int
    runnable_avg: int | None  # since Linux 5.7


def parse_task_sched(text: str) -> Pelt | None:
    """PELT signals from /proc/<pid>/task/<tid>/sched; None when the kernel prints none (no CONFIG_SMP)."""
    values = {m.group(1): int(m.group(2))
              for m in re.finditer(r"^se\.avg\.(\w+)\s*:\s*(-?\d+)", text, re.M)}
    if "util_avg" not in values or "load_avg" not in values:
        return None
    return Pelt(values["util_avg"], values["load_avg"], values.get("runnable_avg"))


def task_sched_path(tid: int, pid: int | None = None) -> str:
    return f"proc/{os.getpid() if pid is None else pid}/task/{tid}/sched"


def read_pelt(tid: int, pid: int | None = None, root: Path | str = "/") -> Pelt | None:
    """A thread's PELT signals now, or None when the kernel does not expose them (no CONFIG_SCHED_DEBUG)."""
    text = read_text(root, task_sched_path(tid, pid))
    return parse_task_sched(text) if text is not None else None


# ---------------------------------------------------------------------------------------------
# Over an interval


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


@dataclass(frozen=True)
class RunqueueObservation:
    """The runqueue depth one CPU had over an interval (nr_running counts the running task too)."""

    cpu: int
    sampled_mean: float | None
    sampled_max: int | None
    samples: int
    time_mean: float | None  # mean runnable tasks from /proc/schedstat
    source: str  # where the figures came from, or why they are missing

    def as_dict(self) -> dict:
        return {"cpu": self.cpu, "sampled_mean": self.sampled_mean, "sampled_max": self.sampled_max,
                "samples": self.samples, "time_mean": self.time_mean, "source": self.source}


@dataclass(frozen=True)
class PeltObservation:
    """A thread's PELT signals over an interval: mean and max of the samples."""

    tid: int
    samples: int
    util_avg_mean: float | None
    util_avg_max: int | None
    load_avg_mean: float | None
    runnable_avg_mean: float | None
    source: str

    def as_dict(self) -> dict:
        return {"tid": self.tid, "samples": self.samples, "util_avg_mean": self.util_avg_mean,
                "util_avg_max": self.util_avg_max, "load_avg_mean": self.load_avg_mean,
                "runnable_avg_mean": self.runnable_avg_mean, "source": self.source}


@dataclass(frozen=True)
class SchedObservation:
    interval_s: float
    runqueues: list[RunqueueObservation]
    threads: list[PeltObservation]

    def as_dict(self) -> dict:
        return {"interval_s": self.interval_s, "runqueues": [r.as_dict() for r in self.runqueues],
                "threads": [t.as_dict() for t in self.threads]}


@dataclass
class _Series:
    depths: dict[int, list[int]] = field(default_factory=dict)
    pelt: dict[int, list[Pelt]] = field(default_factory=dict)


class SchedSampler:
    """Samples runqueue depth of `cpus` and PELT of the watched threads on a thread of its own.

    Use as a context manager around the interval; `watch(tid)` threads as they appear (vCPU threads exist only
    once the VM runs). The sampling thread moves itself off `cpus` when other CPUs are allowed: a reader
    running on a vCPU's CPU would itself deepen the runqueue it measures, and with a threshold change whether
    WFIs trap.
    """

    def __init__(self, cpus: Iterable[int], *, interval_s: float = 0.05, root: Path | str = "/",
                 pid: int | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"sampling interval must be positive, got {interval_s}")
        self.cpus = sorted(set(cpus))
        self.interval_s = interval_s
        self.root = root
        self.pid = os.getpid() if pid is None else pid
        self._tids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._series = _Series()
        self._debug_readable = read_text(root, SCHED_DEBUG) is not None
        self._start: tuple[float, dict[int, CpuSchedstat] | None] | None = None
        self.observation: SchedObservation | None = None

    def watch(self, tid: int) -> None:
        with self._lock:
            if tid not in self._tids:
                self._tids.append(tid)
                self._series.pelt[tid] = []

    def _schedstat(self) -> dict[int, CpuSchedstat] | None:
        text = read_text(self.root, PROC_SCHEDSTAT)
        return parse_cpu_schedstat(text) if text is not None else None

    def _sample(self) -> None:
        if self._debug_readable:
            text = read_text(self.root, SCHED_DEBUG)
            if text is not None:
                depths = parse_sched_debug(text)
                for cpu in self.cpus:
                    if cpu in depths:
                        self._series.depths.setdefault(cpu, []).append(depths[cpu])
        with self._lock:
            tids = list(self._tids)
        for tid in tids:
            p = read_pelt(tid, self.pid, self.root)
            if p is not None:
                self._series.pelt[tid].append(p)

    def _loop(self) -> None:
        allowed = os.sched_getaffinity(0) - set(self.cpus)
        if allowed:
            os.sched_setaffinity(0, allowed)  # this thread only (0 = the calling thread)
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> SchedSampler:
        self._start = (time.monotonic(), self._schedstat())
        self._thread = threading.Thread(target=self._loop, name="pyvmm-sched-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()  # at least one sample even for an interval shorter than the period
        assert self._start is not None
        t0, before = self._start
        elapsed = time.monotonic() - t0
        self.observation = SchedObservation(elapsed, self._runqueues(before, self._schedstat(), elapsed),
                                            [self._pelt(tid) for tid in self._tids])

    def _runqueues(self, before: dict[int, CpuSchedstat] | None, after: dict[int, CpuSchedstat] | None,
                   elapsed: float) -> list[RunqueueObservation]:
        out = []
        for cpu in self.cpus:
            d = self._series.depths.get(cpu, [])
            sources = []
            if d:
                sources.append(f"nr_running sampled from /{SCHED_DEBUG}")
            else:
                sources.append(f"/{SCHED_DEBUG} not readable (needs CONFIG_SCHED_DEBUG, debugfs mounted, root)")
            tm = None
            if before is not None and after is not None and cpu in before and cpu in after and elapsed > 0:
                a, b = before[cpu], after[cpu]
                tm = ((b.running_ns - a.running_ns) + (b.waiting_ns - a.waiting_ns)) / (elapsed * 1e9)
                sources.append(f"time mean from /{PROC_SCHEDSTAT}")
            else:
                sources.append(f"/{PROC_SCHEDSTAT} not readable (needs CONFIG_SCHEDSTATS)")
            out.append(RunqueueObservation(cpu, _mean([float(x) for x in d]), max(d) if d else None, len(d), tm,
                                           "; ".join(sources)))
        return out

    def _pelt(self, tid: int) -> PeltObservation:
        s = self._series.pelt.get(tid, [])
        if not s:
            return PeltObservation(tid, 0, None, None, None, None,
                                   f"not exposed: no PELT in /{task_sched_path(tid, self.pid)} "
                                   f"(needs CONFIG_SCHED_DEBUG and CONFIG_SMP)")
        runnable = [float(p.runnable_avg) for p in s if p.runnable_avg is not None]
        return PeltObservation(tid, len(s), _mean([float(p.util_avg) for p in s]), max(p.util_avg for p in s),
                               _mean([float(p.load_avg) for p in s]), _mean(runnable),
                               f"sampled from /proc/{self.pid}/task/{tid}/sched")
