"""Sampling a running VM's idle behaviour: KVM's per-vCPU binary stats plus each vCPU thread's host CPU
time, last CPU and the runqueue depth of that CPU (wfx.md: what a user needs to judge a WFx/HLT policy).

A sample is a plain JSON-able dict, so the same rate arithmetic serves `pyvmm run --stats-json`, the
control socket (which sends raw samples) and `pyvmm ctl stats --watch` (which subtracts two of them).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from pyvmm.kvm.stats import StatsReader, StatType
from pyvmm.idle.hostsched import runqueue_depths
from pyvmm.idle.threads import ThreadStatError, thread_times

# The counters worth a rate, in display order; each is shown only when the kernel has it.
RATE_STATS = ("exits", "wfi_exit_stat", "wfe_exit_stat", "halt_exits", "halt_wakeup",
              "halt_successful_poll", "halt_attempted_poll",
              "halt_wait_ns", "halt_poll_success_ns", "halt_poll_fail_ns")

NS_TO_PERCENT = 100 / 1e9  # a *_ns rate (ns per second) as % of the time


class VcpuStatsSampler:
    """Owns one stats fd per vCPU (opened once: the descriptors are parsed once) and reads them on demand.

    `vcpus` are objects with `index`, `stats_fd()` and `thread_id` (pyvmm.kvm.vcpu.Vcpu).
    """

    def __init__(self, vcpus: Iterable[Any]) -> None:
        self.vcpus = list(vcpus)
        self.readers: dict[int, StatsReader] = {}
        for v in self.vcpus:
            try:
                self.readers[v.index] = StatsReader.from_object(v)
            except OSError:
                pass  # no KVM_GET_STATS_FD (Linux < 5.14): the sample says so with stats None

    def sample(self, *, runqueue: bool = True) -> dict:
        """{"monotonic_ns", "vcpus": [{index, tid, stats, cpu_s, wait_s, last_cpu, state}], "runqueue"}."""
        out: list[dict] = []
        cpus: set[int] = set()
        for v in self.vcpus:
            entry: dict[str, Any] = {"index": v.index, "tid": v.thread_id, "stats": None,
                                     "cpu_s": None, "wait_s": None, "last_cpu": None, "state": None}
            reader = self.readers.get(v.index)
            if reader is not None and reader.fd >= 0:
                snap = reader.snapshot()
                entry["stats"] = {d.name: d.named_value(snap.raw[d.name][0]) for d in snap.layout.descriptors
                                  if d.size == 1 and d.type in (StatType.CUMULATIVE, StatType.INSTANT,
                                                                StatType.PEAK)}
            if v.thread_id is not None:
                try:
                    t = thread_times(v.thread_id)
                except ThreadStatError:
                    pass  # the thread has ended: its CPU time is no longer readable
                else:
                    entry.update(cpu_s=t.cpu_s, last_cpu=t.last_cpu, state=t.state,
                                 wait_s=None if t.wait_ns is None else t.wait_ns / 1e9)
                    cpus.add(t.last_cpu)
            out.append(entry)
        rq = {}
        if runqueue and cpus:
            rq = {str(s.cpu): {"nr_running": s.nr_running, "source": s.source} for s in runqueue_depths(sorted(cpus))}
        return {"monotonic_ns": time.monotonic_ns(), "vcpus": out, "runqueue": rq}

    def close(self) -> None:
        for r in self.readers.values():
            r.close()
        self.readers.clear()


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def interval(before: dict, after: dict) -> dict:
    """Per-second rates between two samples of the same VM.

    Per vCPU: {"index", "rates": {stat: per second}, "cpu_percent", "wait_percent", "last_cpu", "runqueue"}.
    Time stats (*_ns) become nanoseconds per second (1e9 = the whole interval); cpu_percent 100 = one host CPU.
    """
    dt = (after["monotonic_ns"] - before["monotonic_ns"]) / 1e9
    if dt <= 0:
        raise ValueError(f"samples are not in order (interval {dt:.6f} s)")
    prev = {v["index"]: v for v in before["vcpus"]}
    rows = []
    for v in after["vcpus"]:
        b = prev.get(v["index"], {})
        rates: dict[str, float] = {}
        for name in RATE_STATS:
            x1 = _num((v.get("stats") or {}).get(name))
            x0 = _num((b.get("stats") or {}).get(name))
            if x1 is not None and x0 is not None:
                rates[name] = (x1 - x0) / dt
        cpu = None
        if _num(v.get("cpu_s")) is not None and _num(b.get("cpu_s")) is not None:
            cpu = 100.0 * (v["cpu_s"] - b["cpu_s"]) / dt
        wait = None
        if _num(v.get("wait_s")) is not None and _num(b.get("wait_s")) is not None:
            wait = 100.0 * (v["wait_s"] - b["wait_s"]) / dt
        last = v.get("last_cpu")
        rq = after.get("runqueue", {}).get(str(last)) if last is not None else None
        rows.append({"index": v["index"], "tid": v.get("tid"), "rates": rates, "cpu_percent": cpu,
                     "wait_percent": wait, "last_cpu": last,
                     "runqueue": None if rq is None else rq.get("nr_running")})
    return {"interval_s": dt, "vcpus": rows}


def totals(first: dict | None, last: dict) -> dict:
    """Totals over a VM's life from its first sample (None: counters from zero) to its last."""
    out = []
    prev = {v["index"]: v for v in (first or {"vcpus": []})["vcpus"]}
    for v in last["vcpus"]:
        b = prev.get(v["index"], {})
        stats = {}
        for name, x in (v.get("stats") or {}).items():
            x0 = (b.get("stats") or {}).get(name)
            # keep ints exact (counts stay counts); only numeric, non-bool stats are differenced
            stats[name] = x if _num(x0) is None or _num(x) is None else x - x0
        cpu = v.get("cpu_s")
        if _num(cpu) is not None and _num(b.get("cpu_s")) is not None:
            cpu = cpu - b["cpu_s"]
        out.append({"index": v["index"], "tid": v.get("tid"), "stats": stats, "cpu_s": cpu,
                    "last_cpu": v.get("last_cpu")})
    return {"vcpus": out}


# (header, width, format, whether the column is dropped when no vCPU has a value: a stat another architecture has)
_COLUMNS = [("vCPU", 4, "d", False), ("exits/s", 9, ".0f", False), ("wfi/s", 8, ".0f", True), ("wfe/s", 8, ".0f", True),
            ("halt/s", 8, ".0f", True), ("wait%", 6, ".1f", False), ("poll%", 6, ".1f", True),
            ("hostCPU%", 8, ".1f", False), ("cpu", 4, "d", False), ("runq", 5, "d", False)]


def _row_values(row: dict) -> list:
    r = row["rates"]
    poll = None
    if "halt_poll_success_ns" in r or "halt_poll_fail_ns" in r:
        poll = NS_TO_PERCENT * (r.get("halt_poll_success_ns", 0.0) + r.get("halt_poll_fail_ns", 0.0))
    wait = NS_TO_PERCENT * r["halt_wait_ns"] if "halt_wait_ns" in r else None
    return [row["index"], r.get("exits"), r.get("wfi_exit_stat"), r.get("wfe_exit_stat"), r.get("halt_exits"), wait,
            poll, row["cpu_percent"], row["last_cpu"], row["runqueue"]]


def render_interval(iv: dict, all_columns: bool = False) -> list[str]:
    """A table of one interval's rates (what `pyvmm ctl stats` prints): the columns of stats this host's KVM does
    not have (wfi/s on x86_64, halt/s on arm64) are left out unless `all_columns`."""
    rows = [_row_values(row) for row in iv["vcpus"]]
    keep = [i for i, (_, _, _, optional) in enumerate(_COLUMNS)
            if all_columns or not optional or any(values[i] is not None for values in rows)]

    def cell(value: object, width: int, fmt: str) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"

    lines = [" ".join(f"{_COLUMNS[i][0]:>{_COLUMNS[i][1]}}" for i in keep)]
    lines += [" ".join(cell(values[i], _COLUMNS[i][1], _COLUMNS[i][2]) for i in keep) for values in rows]
    return lines


def observed_effects(policy: dict, vcpus: list[dict]) -> list[str]:
    """Cross-check the policy in force against the exit counters: a kernel (or a nested/software KVM backend)
    may accept a passthrough request and still trap. Reports what the counters say, never guesses."""
    out = []
    checks = [("hlt", "halt_exits", policy.get("idle_exits", [])),
              ("wfi", "wfi_exit_stat", policy.get("wfx_passthrough", []))]
    for insn, stat, passed in checks:
        if insn not in passed:
            continue
        for v in vcpus:
            n = (v.get("stats") or {}).get(stat)
            if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0:
                out.append(f"vCPU {v['index']}: {insn.upper()} passthrough is in force but {stat} counted {n}: "
                           f"this KVM still traps some {insn.upper()}s (e.g. a software or nested backend)")
    return out
