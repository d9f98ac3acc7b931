"""The results of `pyvmm bench idle`: one measurement per run, aggregated per cell (policy x contention level)
with its spread over the repeats, rendered as a table, CSV, JSON and a PNG with one panel per metric.

Every metric is declared once in METRICS (header, unit, how a run yields it, how to plot it); the table, the
CSV, the JSON and the plot all iterate that list, so a new metric is one entry.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pyvmm.idle.cpuidle import IdleResidency
from pyvmm.idle.hostsched import PeltObservation, RunqueueObservation


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class RunMeasure:
    """One run of one policy at one contention level. Scheduler and idle-state figures are None when the run
    did not observe them (the bench without --contend on an unpinned vCPU, a kernel that exposes nothing)."""

    policy: str
    contention: int | None  # busy tasks per vCPU CPU during the run; None: no --contend
    duration_s: float
    periods: int
    stats: dict[str, Any]  # vCPU 0's KVM statistics over the whole run (every period): *_ns in ns, as named
    interval_stats: dict[str, Any]  # the same over duration_s only: for rates and shares of time
    cpu_s: float | None  # host CPU time of vCPU 0's thread over duration_s
    latencies_us: list[float]  # guest-measured wake-up latency of each period
    runqueues: list[RunqueueObservation] = field(default_factory=list)  # the vCPUs' host CPUs
    pelt: list[PeltObservation] = field(default_factory=list)  # the vCPU threads
    idle: IdleResidency | None = None
    notes: list[str] = field(default_factory=list)  # policy fallbacks, observed effects


def _per_period(stat: str) -> Callable[[RunMeasure], float | None]:
    return lambda r: r.stats[stat] / r.periods if stat in r.stats and r.periods else None


def _share_of_run(f: Callable[[RunMeasure], float | None],
                  scale: float = 100.0) -> Callable[[RunMeasure], float | None]:
    """Per second of the measured interval (scale 1) or its percentage (scale 100)."""
    def share(r: RunMeasure) -> float | None:
        v = f(r)
        return None if v is None or r.duration_s <= 0 else scale * v / r.duration_s
    return share


def _latency(q: float | None) -> Callable[[RunMeasure], float | None]:
    return lambda r: (max(r.latencies_us) if q is None else percentile(r.latencies_us, q)) if r.latencies_us else None


def _mean_of(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _ns_to_s(value: float | None) -> float | None:
    return None if value is None else value / 1e9


def _poll_s(r: RunMeasure) -> float | None:
    st = r.interval_stats
    if "halt_poll_success_ns" not in st and "halt_poll_fail_ns" not in st:
        return None
    return (st.get("halt_poll_success_ns", 0) + st.get("halt_poll_fail_ns", 0)) / 1e9


def _idle(kind: str) -> Callable[[RunMeasure], float | None]:
    def get(r: RunMeasure) -> float | None:
        if r.idle is None or not r.idle.exposed:
            return None
        v = r.idle.deepest_share() if kind == "deepest" else r.idle.idle_share()
        return None if v is None else 100.0 * v
    return get


@dataclass(frozen=True)
class Metric:
    key: str  # JSON key
    header: str  # table and CSV header
    fmt: str
    get: Callable[[RunMeasure], float | None]
    panel: str | None = None  # plot panel title (None: not plotted)
    log: bool = False  # log y axis (latencies span decades between policies)


METRICS: list[Metric] = [
    Metric("exits_per_s", "exits/s", ".0f", _share_of_run(lambda r: r.interval_stats.get("exits"), 1.0)),
    Metric("wfi_per_period", "wfi/period", ".2f", _per_period("wfi_exit_stat"), "WFI traps per idle period"),
    Metric("wfe_per_period", "wfe/period", ".2f", _per_period("wfe_exit_stat"), "WFE traps per idle period"),
    Metric("halt_per_period", "halt/period", ".2f", _per_period("halt_exits"), "halt exits per idle period"),
    Metric("halt_wait_percent", "halt wait %", ".1f",
           _share_of_run(lambda r: _ns_to_s(r.interval_stats.get("halt_wait_ns")))),
    Metric("poll_percent", "poll %", ".1f", _share_of_run(_poll_s)),
    Metric("host_cpu_ms", "host CPU ms", ".1f", lambda r: None if r.cpu_s is None else 1e3 * r.cpu_s),
    Metric("host_cpu_percent", "host CPU %", ".1f", _share_of_run(lambda r: r.cpu_s),
           "host CPU of the vCPU thread (% of one CPU)"),
    Metric("wake_p50_us", "wake median us", ".1f", _latency(50), "guest wake-up latency p50 (µs)", log=True),
    Metric("wake_p99_us", "wake p99 us", ".1f", _latency(99), "guest wake-up latency p99 (µs)", log=True),
    Metric("wake_max_us", "wake max us", ".1f", _latency(None), "guest wake-up latency max (µs)", log=True),
    Metric("rq_sampled", "rq depth", ".2f", lambda r: _mean_of([q.sampled_mean for q in r.runqueues]),
           "runqueue depth of the vCPU's CPU (sampled nr_running)"),
    Metric("rq_max", "rq max", ".0f", lambda r: max((q.sampled_max for q in r.runqueues
                                                     if q.sampled_max is not None), default=None)),
    Metric("rq_time_mean", "rq time-avg", ".2f", lambda r: _mean_of([q.time_mean for q in r.runqueues]),
           "runnable tasks on the vCPU's CPU (time average, schedstat)"),
    Metric("util_avg", "util_avg", ".0f", lambda r: _mean_of([p.util_avg_mean for p in r.pelt]),
           "vCPU thread PELT util_avg (0-1024)"),
    Metric("load_avg", "load_avg", ".0f", lambda r: _mean_of([p.load_avg_mean for p in r.pelt]),
           "vCPU thread PELT load_avg"),
    Metric("idle_percent", "idle %", ".1f", _idle("any"), "host idle-state residency (% of run)"),
    Metric("deepest_idle_percent", "deepest idle %", ".1f", _idle("deepest"),
           "deepest idle-state residency (% of run)"),
]


@dataclass(frozen=True)
class Spread:
    """A metric over the repeats of one cell."""

    mean: float
    low: float
    high: float
    stdev: float | None  # None for a single run

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(sum(values) / len(values), min(values), max(values),
                   statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Cell:
    """One policy at one contention level: its runs' metrics with their spread, or why it has none."""

    policy: str
    contention: int | None
    runs: int
    values: dict[str, Spread] = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where the scheduler and idle figures came from


def aggregate(policy: str, contention: int | None, runs: list[RunMeasure], error: str | None = None) -> Cell:
    cell = Cell(policy, contention, len(runs), error=error)
    for m in METRICS:
        vals = [v for v in (m.get(r) for r in runs) if v is not None]
        if vals:
            cell.values[m.key] = Spread.of(vals)
    cell.notes = sorted({n for r in runs for n in r.notes})
    cell.sources = sorted({q.source for r in runs for q in r.runqueues} | {p.source for r in runs for p in r.pelt}
                          | {r.idle.reason for r in runs if r.idle is not None})
    return cell


def _shown(cells: list[Cell]) -> list[Metric]:
    return [m for m in METRICS if any(m.key in c.values for c in cells)]


def _fmt(s: Spread | None, fmt: str) -> str:
    if s is None:
        return "-"
    if s.low == s.high:
        return format(s.mean, fmt)
    return f"{format(s.mean, fmt)} [{format(s.low, fmt)}-{format(s.high, fmt)}]"


def render_table(cells: list[Cell]) -> str:
    """Mean per cell, with [min-max] over the repeats where they differ; then errors, notes and sources."""
    metrics = _shown(cells)
    with_level = any(c.contention is not None for c in cells)
    head = ["policy"] + (["contention"] if with_level else []) + ["runs"] + [m.header for m in metrics]
    rows = [head]
    for c in cells:
        rows.append([c.policy] + ([str(c.contention)] if with_level else []) + [str(c.runs)]
                    + [_fmt(c.values.get(m.key), m.fmt) for m in metrics])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    for c in cells:
        name = c.policy + (f" @{c.contention}" if with_level else "")
        if c.error:
            out.append(f"{name}: {c.error}")
        out.extend(f"{name}: {n}" for n in c.notes)
    sources = sorted({s for c in cells for s in c.sources})
    out.extend(f"source: {s}" for s in sources)
    return "\n".join(out)


def write_csv(cells: list[Cell], path: Path) -> None:
    """One row per cell; for each metric its mean, min, max and stdev columns (empty when not measured)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "contention", "runs"]
                   + [f"{m.header}{suffix}" for m in METRICS for suffix in ("", " min", " max", " stdev")]
                   + ["error"])
        for c in cells:
            row: list[Any] = [c.policy, "" if c.contention is None else c.contention, c.runs]
            for m in METRICS:
                s = c.values.get(m.key)
                row += ["", "", "", ""] if s is None else [s.mean, s.low, s.high, "" if s.stdev is None else s.stdev]
            w.writerow(row + [c.error or ""])


def read_csv(path: Path) -> list[Cell]:
    """The cells back from write_csv's file (to draw the plot where matplotlib is, from a run where it is not)."""
    cells = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            cell = Cell(row["policy"], int(row["contention"]) if row["contention"] else None, int(row["runs"]),
                        error=row["error"] or None)
            for m in METRICS:
                if row.get(m.header):
                    sd = row[f"{m.header} stdev"]
                    cell.values[m.key] = Spread(float(row[m.header]), float(row[f"{m.header} min"]),
                                                float(row[f"{m.header} max"]), float(sd) if sd else None)
            cells.append(cell)
    return cells


def to_json(cells: list[Cell]) -> list[dict]:
    return [{"policy": c.policy, "contention": c.contention, "runs": c.runs, "error": c.error, "notes": c.notes,
             "sources": c.sources,
             "metrics": {k: {"mean": s.mean, "min": s.low, "max": s.high, "stdev": s.stdev}
                         for k, s in c.values.items()}} for c in cells]


def write_plot(cells: list[Cell], path: Path, title: str) -> None:
    """One panel per plotted metric that has values; policies are series, contention the x axis (policies side by
    side when there is no contention sweep); error bars span min-max over the repeats."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    ok = [c for c in cells if c.error is None]
    metrics = [m for m in _shown(ok) if m.panel is not None]
    if not metrics:
        raise ValueError("nothing to plot: no cell has a plotted metric")
    policies = list(dict.fromkeys(c.policy for c in ok))
    levels = sorted({c.contention for c in ok if c.contention is not None})
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    spare = nrows * ncols - len(metrics)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + (0 if spare else 2.2), 3.2 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for i, p in enumerate(policies):
            pts = [(c.contention if levels else i, c.values[m.key]) for c in ok
                   if c.policy == p and m.key in c.values]
            if not pts:
                continue
            xs = [x + (0.04 * (i - len(policies) / 2) if levels else 0) for x, _ in pts]  # keep error bars apart
            ys = [s.mean for _, s in pts]
            err = [[s.mean - s.low for _, s in pts], [s.high - s.mean for _, s in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=p, linestyle="-" if levels else "none")
        ax.set_title(m.panel, fontsize=9)
        if m.log:
            ax.set_yscale("log")
        if levels:
            ax.set_xticks(levels)
            ax.set_xlabel("busy tasks per vCPU CPU")
        else:
            ax.set_xticks(range(len(policies)))
            ax.set_xticklabels(policies, rotation=20, ha="right", fontsize=8)
        ax.grid(True, alpha=0.3)
    spare = list(axes.flat)[len(metrics):]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if spare:  # the legend in a free panel, outside the data
        spare[0].legend(handles, labels, loc="center", title="policy", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
    else:
        fig.legend(handles, labels, loc="center right", title="policy", fontsize=8)
        fig.tight_layout(rect=(0, 0, 1 - 2.0 / (4.2 * ncols + 2.2), 0.96))
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=72)
    plt.close(fig)
