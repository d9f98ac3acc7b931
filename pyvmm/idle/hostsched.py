"""What the host scheduler sees of a VM: runqueue depth of the vCPUs' CPUs, the vCPU threads' load
signals (PELT), and the host's preemption model.

These are the figures behind the WFx patch review's objections: (a) a vCPU idling in an untrapped WFI
looks 100% busy, which shows in its PELT `se.avg.util_avg` (0..1024); (b)/(e) the per-VM threshold acts
on the runqueue depth of the vCPU's CPU, which userspace hardly controls, so it is measured, not assumed;
and the preemption model was the reviewers' suggested alternative.

Sources, and which is exact:
- runqueue depth, sampled: `.nr_running` of each `cpu#N` section of the scheduler debug file
  (/sys/kernel/debug/sched/debug since 5.13, /proc/sched_debug before; CONFIG_SCHED_DEBUG, debugfs mounted, root). Exact at each sample (the
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

from pyvmm.idle.host import parse_cmdline
from pyvmm.idle.hostcpus import read_text

SCHED_DEBUG_PATHS = ("sys/kernel/debug/sched/debug", "proc/sched_debug")
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


def parse_preempt_debugfs(text: str) -> str | None:
    """/sys/kernel/debug/sched/preempt: "none voluntary (full) lazy" -> "full"."""
    m = re.search(r"\((\w+)\)", text)
    return m.group(1) if m else None


def parse_preempt_config(text: str) -> str | None:
    """Kernel .config: the CONFIG_PREEMPT* choice (dynamic and rt before the plain choice they build on)."""
    cfg = {m.group(1): m.group(2) for m in re.finditer(r"^(CONFIG_PREEMPT\w*)=(\S+)", text, re.M)}
    if cfg.get("CONFIG_PREEMPT_RT") == "y":
        return "rt"
    if cfg.get("CONFIG_PREEMPT_DYNAMIC") == "y":
        return "dynamic"
    for key, model in (("CONFIG_PREEMPT", "full"), ("CONFIG_PREEMPT_VOLUNTARY", "voluntary"),
                       ("CONFIG_PREEMPT_NONE", "none")):
        if cfg.get(key) == "y":
            return model
    return None


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
    config, config_src = _read_config(root, release)
    cmdline = parse_cmdline(read_text(root, "proc/cmdline") or "")
    build = parse_version_tokens(read_text(root, "proc/sys/kernel/version") or "")
    if build == "dynamic":
        if "preempt" in cmdline:
            return Preemption(build, cmdline["preempt"], "uname -v PREEMPT_DYNAMIC, preempt= on /proc/cmdline")
        # Without preempt=, the mode is the config's PREEMPT choice (its default for dynamic kernels).
        default = _config_choice(config)
        if default is not None:
            return Preemption(build, default, f"uname -v PREEMPT_DYNAMIC; mode: the default of {config_src}, "
                                              f"as debugfs sched/preempt (which shows changes) is not readable")
        return Preemption(build, None, "uname -v PREEMPT_DYNAMIC; mode unknown: debugfs sched/preempt not "
                                       "readable (mount debugfs, run as root)")
    if build is not None:
        return Preemption(build, build, "uname -v")
    model = _config_choice(config)
    if model is not None:
        return Preemption(model, model, config_src)
    # uname -v names every preemptible build; no token means one of the two non-preemptible ones.
    return Preemption("none-or-voluntary", None, "uname -v has no PREEMPT token and no kernel config is readable")


def _read_config(root: Path | str, release: str) -> tuple[str | None, str]:
    """The running kernel's .config: /boot/config-RELEASE, else /proc/config.gz (CONFIG_IKCONFIG_PROC)."""
    import gzip

    text = read_text(root, f"boot/config-{release}") if release else None
    if text is not None:
        return text, f"/boot/config-{release}"
    try:
        with gzip.open(Path(root) / "proc/config.gz", "rt") as f:
            return f.read(), "/proc/config.gz"
    except (OSError, EOFError):
        return None, "no kernel config"


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


def parse_sched_debug(text: str) -> dict[int, int]:
    """{cpu: nr_running} from the scheduler debug file ("cpu#N" sections, ".nr_running : X").

    Only the first .nr_running after each cpu#N header is the runqueue's (cfs_rq sections repeat the key).
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


def sched_debug_path(root: Path | str = "/") -> str | None:
    """The scheduler debug file readable here (relative to root), or None."""
    return next((p for p in SCHED_DEBUG_PATHS if read_text(root, p) is not None), None)


@dataclass(frozen=True)
class RunqueueSample:
    """nr_running of one CPU now, or why it is not known."""

    cpu: int
    nr_running: int | None
    source: str  # the file it came from, or the reason it is unavailable
    run_delay_ns: int | None = None  # /proc/schedstat: total time tasks waited on this runqueue


def runqueue_depths(cpus: Iterable[int], root: Path | str = "/") -> list[RunqueueSample]:
    """nr_running of each CPU in `cpus` now, from the scheduler debug file when readable, with the CPU's
    /proc/schedstat wait total when readable. What cannot be read says so, with nr_running None."""
    wanted = list(cpus)
    text = read_text(root, PROC_SCHEDSTAT)
    delays = {c: s.waiting_ns for c, s in parse_cpu_schedstat(text).items()} if text is not None else {}
    path = sched_debug_path(root)
    if path is None:
        why = ("unavailable: neither " + " nor ".join(f"/{p}" for p in SCHED_DEBUG_PATHS) +
               " is readable (mount debugfs and run as root, kernel needs CONFIG_SCHED_DEBUG)")
        return [RunqueueSample(c, None, why, delays.get(c)) for c in wanted]
    depths = parse_sched_debug(read_text(root, path) or "")
    return [RunqueueSample(c, depths.get(c), f"/{path}" if c in depths else f"cpu {c} not in /{path}", delays.get(c))
            for c in wanted]


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
        self._debug_path = sched_debug_path(root)
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
        if self._debug_path is not None:
            text = read_text(self.root, self._debug_path)
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
                sources.append(f"nr_running sampled from /{self._debug_path}")
            else:
                sources.append("no scheduler debug file readable (needs CONFIG_SCHED_DEBUG, debugfs mounted, root)")
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
                               "PELT sampled from /proc/PID/task/TID/sched")
