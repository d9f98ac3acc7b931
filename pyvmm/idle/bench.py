"""The idle tuning experiment behind `pyvmm bench idle`: run an idle guest under several policies, repeat each, and
summarise what each policy costs the host (exits, halt wait, host CPU time per vCPU) and gives the guest (wake-up
latency measured inside the guest with its own timer).

The guest contract (docs/MACHINES.md, the `idle` guest): DATA values are the timer frequency, then one wake-up
latency in timer ticks per period. Runs are in-process Vmm runs, one at a time.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyvmm.idle.policy import IdlePolicy, PolicyParseError

# policy spec key -> IdlePolicy.from_strings argument
_SPEC_KEYS = {"threshold": "wfx_trap_threshold", "passthrough": "wfx_passthrough", "halt-poll": "halt_poll_ns",
              "idle-exits": "idle_exits", "pin": "cpu_affinity"}


@dataclass(frozen=True)
class PolicySpec:
    label: str
    policy: IdlePolicy


def parse_policy_spec(text: str, *, allow_fallback: bool = False) -> PolicySpec:
    """"default", or comma-separated KEY=VALUE items: threshold=N, passthrough=wfi+wfe, halt-poll=NS,
    idle-exits=hlt+pause, pin=CPUS (vCPU 0's host CPUs, e.g. pin=1 or pin=0-1). "+" separates set members."""
    label = text.strip()
    if label in ("", "default"):
        return PolicySpec("default", IdlePolicy(allow_fallback=allow_fallback))
    args: dict[str, Any] = {}
    for item in label.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key not in _SPEC_KEYS:
            raise PolicyParseError(f"--policy {text!r}: {item.strip()!r} is not KEY=VALUE with KEY one of "
                                   f"{', '.join(_SPEC_KEYS)} (or the word default)")
        name = _SPEC_KEYS[key]
        if name in args:
            raise PolicyParseError(f"--policy {text!r}: {key} given twice")
        args[name] = f"0={value.replace('+', ',')}" if key == "pin" else value.replace("+", ",")
    return PolicySpec(label, IdlePolicy.from_strings(allow_fallback=allow_fallback, **args))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class RunResult:
    """One run of one policy."""

    label: str
    duration_s: float
    periods: int
    stats: dict[str, Any]  # vCPU 0 totals over the run (natural units)
    cpu_s: float | None  # host CPU time of vCPU 0's thread
    frequency_hz: int
    latencies_ticks: list[int]
    policy: dict = field(default_factory=dict)
    observed: list[str] = field(default_factory=list)

    @property
    def latencies_us(self) -> list[float]:
        return [t * 1e6 / self.frequency_hz for t in self.latencies_ticks]


@dataclass
class Row:
    """Aggregate of a policy's runs (means over repeats; latency percentiles over all periods of all runs)."""

    label: str
    runs: int
    error: str | None = None
    exits_per_s: float | None = None
    wfi_per_period: float | None = None
    wfe_per_period: float | None = None
    halt_per_period: float | None = None
    halt_wait_percent: float | None = None
    poll_percent: float | None = None
    host_cpu_ms: float | None = None
    host_cpu_percent: float | None = None
    latency_median_us: float | None = None
    latency_p99_us: float | None = None
    notes: list[str] = field(default_factory=list)


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def summarise(label: str, runs: list[RunResult], error: str | None = None) -> Row:
    if not runs:
        return Row(label, 0, error=error)

    def per_period(stat: str) -> float | None:
        return _mean([r.stats[stat] / r.periods if stat in r.stats and r.periods else None for r in runs])

    lat = [x for r in runs for x in r.latencies_us]
    return Row(
        label, len(runs), error,
        exits_per_s=_mean([r.stats.get("exits", 0) / r.duration_s for r in runs if r.duration_s > 0]),
        wfi_per_period=per_period("wfi_exit_stat"),
        wfe_per_period=per_period("wfe_exit_stat"),
        halt_per_period=per_period("halt_exits"),
        halt_wait_percent=_mean([100.0 * r.stats["halt_wait_ns"] / r.duration_s
                                 if "halt_wait_ns" in r.stats and r.duration_s > 0 else None for r in runs]),
        poll_percent=_mean([100.0 * (r.stats.get("halt_poll_success_ns", 0.0) + r.stats.get("halt_poll_fail_ns", 0.0))
                            / r.duration_s if r.duration_s > 0 else None for r in runs]),
        host_cpu_ms=_mean([None if r.cpu_s is None else 1e3 * r.cpu_s for r in runs]),
        host_cpu_percent=_mean([None if r.cpu_s is None or r.duration_s <= 0 else 100.0 * r.cpu_s / r.duration_s
                                for r in runs]),
        latency_median_us=percentile(lat, 50) if lat else None,
        latency_p99_us=percentile(lat, 99) if lat else None,
        notes=sorted({n for r in runs for n in r.observed} | {f for r in runs for f in r.policy.get("fallbacks", [])}),
    )


# (header, attribute, format); a column is shown only when some row has a value for it.
COLUMNS = [
    ("policy", "label", "s"), ("runs", "runs", "d"), ("exits/s", "exits_per_s", ".0f"),
    ("wfi/period", "wfi_per_period", ".2f"), ("wfe/period", "wfe_per_period", ".2f"),
    ("halt/period", "halt_per_period", ".2f"), ("halt wait %", "halt_wait_percent", ".1f"),
    ("poll %", "poll_percent", ".1f"), ("host CPU ms", "host_cpu_ms", ".1f"),
    ("host CPU %", "host_cpu_percent", ".1f"), ("wake median us", "latency_median_us", ".1f"),
    ("wake p99 us", "latency_p99_us", ".1f"),
]


def _columns(rows: list[Row]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if c[1] in ("label", "runs") or any(getattr(r, c[1]) is not None for r in rows)]


def render_table(rows: list[Row]) -> str:
    cols = _columns(rows)
    cells = [[h for h, _, _ in cols]]
    for r in rows:
        line = []
        for _, attr, fmt in cols:
            v = getattr(r, attr)
            line.append("-" if v is None else format(v, fmt))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
           for row in cells]
    for r in rows:
        if r.error:
            out.append(f"{r.label}: {r.error}")
        for n in r.notes:
            out.append(f"{r.label}: {n}")
    return "\n".join(out)


def write_csv(rows: list[Row], path: Path) -> None:
    cols = [c for c in COLUMNS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([h for h, _, _ in cols] + ["error"])
        for r in rows:
            w.writerow([("" if getattr(r, a) is None else getattr(r, a)) for _, a, _ in cols] + [r.error or ""])


def write_plot(rows: list[Row], path: Path, title: str) -> None:
    """Two panels: guest wake-up latency (median, p99) and host cost (host CPU %, halt wait %) per policy."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.error is None]
    labels = [r.label for r in ok]
    x = list(range(len(ok)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(ok) + 4), 4.5))
    w = 0.38
    a1.bar([i - w / 2 for i in x], [r.latency_median_us or 0 for r in ok], w, label="median")
    a1.bar([i + w / 2 for i in x], [r.latency_p99_us or 0 for r in ok], w, label="p99")
    a1.set_ylabel("guest wake-up latency (us)")
    a1.set_title("what the guest gets")
    a2.bar([i - w / 2 for i in x], [r.host_cpu_percent or 0 for r in ok], w, label="host CPU % of vCPU thread")
    a2.bar([i + w / 2 for i in x], [r.halt_wait_percent or 0 for r in ok], w, label="halt wait %")
    a2.set_ylabel("% of run time")
    a2.set_title("what the host pays")
    for a in (a1, a2):
        a.set_xticks(x)
        a.set_xticklabels(labels, rotation=20, ha="right")
        a.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_once(kernel: Path, spec: PolicySpec, periods: int, period_us: int, cap_numbers: dict[str, int]) -> RunResult:
    """One in-process VM run of the idle guest under `spec`. Raises PyvmmError (e.g. IdleRefusedError)."""
    from pyvmm.errors import ExitStatus, PyvmmError, StoppedError
    from pyvmm.spec import ConsoleSpec, IdleSpec, VmSpec
    from pyvmm.vmm.runner import run_vm

    vm = VmSpec(kernel=kernel, guest_args=[periods, period_us], console=ConsoleSpec(stdin=False, echo=False),
                idle=IdleSpec(policy=spec.policy, cap_numbers=cap_numbers, measure=True))
    result = run_vm(vm)
    report = result.report
    assert report is not None  # IdleSpec.measure asks for it
    if result.status in (ExitStatus.SIGINT, ExitStatus.SIGTERM):
        raise StoppedError(result.outcome.reason, result.status)  # the user wants the whole bench to end
    if result.status != 0:
        raise PyvmmError(f"the guest ended with status {result.status}: {result.outcome.reason}")
    data = report["testdev_data"]
    if len(data) < 2 or data[0] <= 0:
        raise PyvmmError(f"the guest reported {len(data)} DATA values: not the idle guest's contract "
                         f"(timer frequency, then one latency per period)")
    vc = report["vcpus"][0]
    return RunResult(spec.label, report["duration_s"], len(data) - 1, vc["stats"], vc["cpu_s"], data[0], data[1:],
                     report["policy"], report["observed"])
