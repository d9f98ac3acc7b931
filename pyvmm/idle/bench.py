"""The idle tuning experiment behind `pyvmm bench idle`: run an idle guest under several policies, optionally at
several contention levels (busy tasks beside each vCPU on its host CPU), repeat each, and measure what each policy
costs the host (exits, halt wait, host CPU time per vCPU, the scheduler's view: runqueue depth, PELT, idle states)
and gives the guest (wake-up latency measured inside the guest with its own timer). Results: pyvmm.idle.sweep.

The guest contract (docs/MACHINES.md, the `idle` guest): DATA values are the timer frequency, then one wake-up
latency in timer ticks per period. Runs are in-process Vmm runs, one at a time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyvmm.idle.policy import IdlePolicy, PolicyParseError
from pyvmm.idle.sweep import RunMeasure

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


def with_default_pin(spec: PolicySpec, affinity: dict[int, set[int]]) -> PolicySpec:
    """`spec` with `affinity` for the vCPUs its own pin= does not place (same label: the report says so once)."""
    merged = {**affinity, **spec.policy.cpu_affinity}
    return PolicySpec(spec.label, dataclasses.replace(spec.policy, cpu_affinity=merged))


def hog_time_bound(periods: int, period_us: int) -> float:
    """How long busy tasks may live for one run: far beyond the guest's own time (emulation is slow), so that
    they never end before the run; they are killed as soon as it ends anyway."""
    return 120.0 + 20.0 * periods * period_us / 1e6


def run_once(kernel: Path, spec: PolicySpec, periods: int, period_us: int, cap_numbers: dict[str, int], *,
             contention: int | None = None) -> RunMeasure:
    """One in-process VM run of the idle guest under `spec`, with `contention` busy tasks on each vCPU's host CPU
    (which the policy must pin). Raises PyvmmError (e.g. IdleRefusedError, ContentionError)."""
    from contextlib import nullcontext

    from pyvmm.errors import ExitStatus, PyvmmError, StoppedError
    from pyvmm.idle.contend import Hogs
    from pyvmm.idle.observe import HostObserver
    from pyvmm.spec import ConsoleSpec, IdleSpec, VmSpec
    from pyvmm.vmm.runner import run_vm

    vm = VmSpec(kernel=kernel, guest_args=[periods, period_us], console=ConsoleSpec(stdin=False, echo=False),
                idle=IdleSpec(policy=spec.policy, cap_numbers=cap_numbers, measure=True))
    observer = HostObserver()
    hogs = None
    if contention is not None:
        cpus = set().union(*spec.policy.cpu_affinity.values()) if spec.policy.cpu_affinity else set()
        if not cpus:
            raise PyvmmError(f"{spec.label}: contention needs the vCPUs pinned (pin= or --cpu-affinity)")
        hogs = Hogs(cpus, contention, max_seconds=hog_time_bound(periods, period_us))
    with hogs if hogs is not None else nullcontext():
        result = run_vm(vm, extra=[observer])
        ended = [h.cpu for h in (hogs.hogs if hogs is not None else []) if h.process.poll() is not None]
    report = result.report
    assert report is not None  # IdleSpec.measure asks for it
    if result.status in (ExitStatus.SIGINT, ExitStatus.SIGTERM):
        raise StoppedError(result.outcome.reason, result.status)  # the user wants the whole bench to end
    if result.status != 0:
        raise PyvmmError(f"the guest ended with status {result.status}: {result.outcome.reason}")
    if ended:
        raise PyvmmError(f"busy tasks on CPU {sorted(set(ended))} ended before the run did")
    data = report["testdev_data"]
    if len(data) < 2 or data[0] <= 0:
        raise PyvmmError(f"the guest reported {len(data)} DATA values: not the idle guest's contract "
                         f"(timer frequency, then one latency per period)")
    vc = report["vcpus"][0]  # counts over the whole run: every period the guest reported
    iv = report["interval_vcpus"][0]  # over duration_s: for rates and shares of time
    policy = report["policy"]
    obs = observer.observation
    notes = [*report["observed"], *policy.get("fallbacks", []), *policy.get("warnings", [])]
    if obs is not None:
        notes += obs.notes
    return RunMeasure(spec.label, contention, report["duration_s"], len(data) - 1, vc["stats"], iv["stats"],
                      iv["cpu_s"], [t * 1e6 / data[0] for t in data[1:]], obs.sched.runqueues if obs else [],
                      obs.sched.threads if obs else [], obs.idle if obs else None, notes)
