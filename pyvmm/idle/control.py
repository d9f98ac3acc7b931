"""One VM's idle policy over its life: applied before vCPUs exist, vCPUs pinned once their threads run,
changed live (control socket), measured (stats sampler), and reported (JSON-able dicts).

The controller is the single place that touches the VM for idle settings; a lock serialises live changes
so two control-socket clients cannot interleave KVM_ENABLE_CAP calls.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Callable, Mapping

from pyvmm.errors import KvmUnavailableError
from pyvmm.idle.policy import IdleChange, IdlePolicy, IdlePolicyError, check_affinity
from pyvmm.kvm.vm import Vm
from pyvmm.outcome import StopLatch, VmOutcome

if TYPE_CHECKING:
    from pyvmm.idle.apply import AppliedPolicy
    from pyvmm.idle.caps import CapTable
    from pyvmm.idle.host import HostInfo
    from pyvmm.idle.measure import VcpuStatsSampler
    from pyvmm.vmm.vmm import Vmm


class IdleRefusedError(KvmUnavailableError):
    """A per-VM idle setting the kernel cannot apply (exit status 69, one-line message)."""


def _apply():
    """pyvmm.idle.apply (and the host probe it needs), imported when a policy is first applied or read back: a run
    with the default policy does neither at start-up."""
    from pyvmm.idle import apply

    return apply


def applied_to_dict(applied: "AppliedPolicy | None", affinity: Mapping[int, set[int]] | None = None) -> dict:
    """The policy in force as JSON-able data (sets as sorted lists)."""
    if applied is None:
        return {}
    return {
        "arch": applied.arch,
        "exits": {name: {"behaviour": s.behaviour, "source": s.source, "detail": s.detail}
                  for name, s in applied.exits.items()},
        "wfx_trap_threshold": applied.wfx_trap_threshold,
        "wfx_passthrough": sorted(applied.wfx_passthrough),
        "idle_exits": sorted(applied.idle_exits),
        "halt_poll_ns": applied.halt_poll_ns,
        "halt_poll_source": applied.halt_poll_source,
        "cpu_affinity": {str(k): sorted(v) for k, v in sorted((affinity or {}).items())},
        "fallbacks": list(applied.fallbacks),
        "notes": list(applied.notes),
    }


def warn_on_stderr(message: str) -> None:
    print(f"pyvmm: {message}", file=sys.stderr, flush=True)


def render_policy(d: dict) -> list[str]:
    """Human-readable lines for a policy dict (applied_to_dict)."""
    lines = []
    for name, s in d.get("exits", {}).items():
        lines.append(f"{name:6} {s['behaviour']}  [{s['source']}{'; ' + s['detail'] if s['detail'] else ''}]")
    hp = d.get("halt_poll_ns")
    lines.append(f"halt polling {('unknown' if hp is None else f'{hp} ns')}  [{d.get('halt_poll_source')}]")
    aff = d.get("cpu_affinity") or {}
    lines.append("vCPU pinning " + (", ".join(f"{k}={','.join(map(str, v))}" for k, v in aff.items())
                                    if aff else "none (the host scheduler decides)"))
    for f in d.get("fallbacks", []):
        lines.append(f"fallback: {f}")
    for n in d.get("notes", []):
        lines.append(f"note: {n}")
    return lines


class IdleController:
    """Applies `policy` to one Vmm and keeps what is in force."""

    def __init__(self, policy: IdlePolicy, *, caps: "CapTable | None" = None, host: "HostInfo | None" = None,
                 warn: Callable[[str], None] = warn_on_stderr, record: bool = True) -> None:
        """`warn`: told once per run when the policy in force is unlikely to do what was meant. `record`: sample the
        vCPUs' statistics as they start and end (what a report needs); without it the sampler is opened only if the
        control socket asks for a sample."""
        self.policy = policy
        self.record = record
        self.warn = warn
        self.warnings: list[str] = []
        self._caps = caps
        self._host = host
        self.applied: "AppliedPolicy | None" = None
        self._unapplied_vm: Vm | None = None  # a default policy is only read back, when first asked for
        self.affinity: dict[int, set[int]] = {}
        self.vmm: "Vmm | None" = None
        self.sampler: "VcpuStatsSampler | None" = None
        self.first_sample: dict | None = None
        self.last_sample: dict | None = None
        self.lock = threading.RLock()
        self._times: dict[int, dict] = {}
        self._watcher: threading.Thread | None = None

    @property
    def host(self) -> "HostInfo":
        if self._host is None:
            from pyvmm.idle.host import probe_host

            self._host = probe_host()
        return self._host

    @property
    def caps(self) -> "CapTable":
        if self._caps is None:
            from pyvmm.idle.caps import cap_table

            self._caps = cap_table()
        return self._caps

    # -- lifecycle --------------------------------------------------------------------------------------------
    def subscribe(self, vmm: "Vmm") -> None:
        self.vmm = vmm
        vmm.events.before_vcpus.subscribe(self.before_vcpus)
        vmm.events.started.subscribe(self.started)
        # A vCPU thread's CPU time is unreadable once it has exited (its /proc/self/task entry goes), and
        # `finished` comes after the join. So the times are also read as the VM is being stopped (the guest's
        # EXIT stops the VM from its own vCPU thread, which is therefore still alive), with a slow periodic
        # reading as the fallback for ends that bypass a stop request (PSCI SYSTEM_OFF, errors).
        vmm.events.stopping.subscribe(lambda outcome: self._record_thread_times())
        vmm.events.finished.subscribe(self.finished)

    def before_vcpus(self, vm: Vm) -> None:
        assert self.vmm is not None
        self.applied, self._unapplied_vm = None, None
        if self.policy == IdlePolicy():
            # Nothing to set: describing what is in force means probing the host, which start-up need not wait for.
            self._unapplied_vm = vm
            return
        try:
            self.applied = self._apply_policy(vm)
        except IdlePolicyError as err:
            raise IdleRefusedError(str(err)) from None

    def _apply_policy(self, vm: Vm) -> "AppliedPolicy":
        assert self.vmm is not None
        return _apply().apply_before_vcpus(vm, self.policy, self.vmm.spec.arch, host=self.host, caps=self.caps)

    def _in_force(self) -> "AppliedPolicy | None":
        """What is in force; for a default policy read back now (its application sets nothing). Under the lock."""
        if self.applied is None and self._unapplied_vm is not None and self.vmm is not None:
            self.applied = self._apply_policy(self._unapplied_vm)
            self._unapplied_vm = None
        return self.applied

    def started(self, vmm: "Vmm") -> None:
        machine = vmm.machine
        assert machine is not None
        self._close_sampler()  # the previous boot's, after a reboot with --on-reboot restart
        if self.policy.cpu_affinity:
            try:
                with self.lock:
                    self.affinity = _apply().apply_affinity(machine.vcpus, self.policy)
            except (IdlePolicyError, OSError) as err:
                vmm.stop(VmOutcome(KvmUnavailableError.exit_status, f"cannot pin vCPUs: {err}", error=True))
        self._check_pinning(machine.vcpus)
        self._times = {}
        if not self.record:
            return
        from pyvmm.idle.measure import VcpuStatsSampler

        self.sampler = VcpuStatsSampler(machine.vcpus)
        self.first_sample = self.sampler.sample(runqueue=False)
        self._watcher = threading.Thread(target=self._watch_times, args=(vmm.latch,), name="idle-times", daemon=True)
        self._watcher.start()

    def _check_pinning(self, vcpus: list) -> None:
        """Objection (e) of the WFx review: a threshold on vCPUs the scheduler may move acts on whatever CPU they land
        on. The affinity is read back from the kernel, so pinning done outside pyvmm (taskset, cgroups) counts."""
        threshold = self.applied.wfx_trap_threshold if self.applied is not None else None
        if threshold is None:
            return  # only a threshold depends on pinning
        from pyvmm.idle.hostcontext import unpinned_threshold_warning

        affinity = {}
        for v in vcpus:
            try:
                affinity[v.index] = os.sched_getaffinity(v.thread_id) if v.thread_id is not None else set()
            except OSError:
                affinity[v.index] = set()
        warning = unpinned_threshold_warning(threshold, len(vcpus), affinity)
        if warning is not None and warning not in self.warnings:
            self.warnings.append(warning)
            self.warn(warning)

    def _record_thread_times(self) -> None:
        with self.lock:  # finished() closes the sampler's fds under the same lock
            if self.sampler is None:
                return
            for v in self.sampler.sample(runqueue=False)["vcpus"]:
                if v["cpu_s"] is not None:
                    self._times[v["index"]] = {k: v[k] for k in ("cpu_s", "wait_s", "last_cpu", "state")}

    def _watch_times(self, latch: StopLatch) -> None:
        while not latch.wait(0.5):
            try:
                self._record_thread_times()
            except (OSError, ValueError):
                return  # the VM is being torn down

    def finished(self, outcome: VmOutcome) -> None:
        with self.lock:
            if self.sampler is not None:
                last = self.sampler.sample(runqueue=False)
                for v in last["vcpus"]:
                    if v["cpu_s"] is None and v["index"] in self._times:
                        v.update(self._times[v["index"]])  # the thread has exited: its last reading
                self.last_sample = last
            self._close_sampler()

    def _close_sampler(self) -> None:
        with self.lock:
            sampler, self.sampler = self.sampler, None
            if sampler is not None:
                sampler.close()

    def close(self) -> None:
        """Release the stats fds whatever happened (a VM that failed to start never reaches `finished`)."""
        if self._watcher is not None:
            self._watcher.join(2.0)  # it ends once the VM's latch is set, which it is when the VM has ended
            self._watcher = None
        self._close_sampler()
        self.vmm = None

    # -- live control (control socket) -----------------------------------------------------------------------
    def policy_dict(self) -> dict:
        with self.lock:
            d = applied_to_dict(self._in_force(), self.affinity)
            if d:
                d["warnings"] = list(self.warnings)
            return d

    def change(self, change: IdleChange) -> dict:
        """Apply a live change; IdlePolicyError (VM unchanged) when the kernel or the rules refuse."""
        with self.lock:
            applied = self._in_force()
            if applied is None or self.vmm is None or self.vmm.machine is None:
                raise IdlePolicyError("the VM is not running")
            self.applied = _apply().apply_live(self.vmm.machine.vm, change, applied, host=self.host, caps=self.caps)
            return applied_to_dict(self.applied, self.affinity)

    def pin(self, affinity: dict[int, set[int]]) -> dict:
        with self.lock:
            machine = self.vmm.machine if self.vmm is not None else None
            if machine is None:
                raise IdlePolicyError("the VM is not running")
            check_affinity(affinity, len(machine.vcpus))
            done = _apply().apply_affinity(machine.vcpus, IdlePolicy(cpu_affinity=affinity))
            self.affinity.update(done)
            return applied_to_dict(self._in_force(), self.affinity)

    def sample(self) -> dict:
        with self.lock:
            if self.sampler is None:
                machine = self.vmm.machine if self.vmm is not None else None
                if self.record or machine is None or self.vmm.latch.is_set():
                    raise IdlePolicyError("the VM is not running")
                from pyvmm.idle.measure import VcpuStatsSampler

                self.sampler = VcpuStatsSampler(machine.vcpus)  # closed by finished() or close()
            return self.sampler.sample()
