"""Probe the host for everything that decides idle behaviour, and which mechanisms exist.

Why each item: the kvm-arm.* boot parameters override per-VM thresholds (decision order in
arm64-host/README.md); kvm module halt-poll parameters are the host-wide halt-poll default;
the CPU count bounds what pinning can do. The scheduler's side (preemption model, CPU
heterogeneity, idle states) is pyvmm.idle.hostcontext.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping

from .caps import CapTable, cap_table

WFX_POLICY_MIN_KERNEL = (6, 11)  # kvm-arm.wf{i,e}_trap_policy first honoured in 6.11
KVM_MODULE_PARAMS = ("halt_poll_ns", "halt_poll_ns_grow", "halt_poll_ns_grow_start",
                     "halt_poll_ns_shrink")


def normalize_arch(machine: str) -> str:
    """uname machine -> pyvmm arch name ("aarch64" -> "arm64")."""
    return {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}.get(
        machine.lower(), machine.lower())


def parse_kernel_version(release: str) -> tuple[int, int]:
    """"6.12.117-wfx" -> (6, 12); (0, 0) if it cannot be read."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def parse_cmdline(text: str) -> dict[str, str]:
    """Kernel parameters of /proc/cmdline as {name: value} (flag-only params map to "").

    Parsing stops at "--": what follows goes to init, not the kernel. Quotes are honoured.
    """
    try:
        words = shlex.split(text)
    except ValueError:  # unbalanced quote: fall back to whitespace splitting
        words = text.split()
    out: dict[str, str] = {}
    for w in words:
        if w == "--":
            break
        k, _, v = w.partition("=")
        out[k] = v
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@dataclass(frozen=True)
class HostInfo:
    """Snapshot of host facts relevant to idle tuning."""

    arch: str
    kernel_release: str
    cmdline: Mapping[str, str]  # all kernel parameters
    kvm_module_params: Mapping[str, int | None]  # None: not readable (e.g. kvm not loaded)
    cpu_count: int

    @property
    def kernel_version(self) -> tuple[int, int]:
        return parse_kernel_version(self.kernel_release)

    @property
    def kvm_arm_params(self) -> dict[str, str]:
        return {k: v for k, v in self.cmdline.items() if k.startswith("kvm-arm.")}

    def wfx_trap_policy(self, insn: str) -> str | None:
        """kvm-arm.wfi_trap_policy / wfe_trap_policy as given on the cmdline (None: unset)."""
        return self.cmdline.get(f"kvm-arm.{insn}_trap_policy")

    @property
    def honours_wfx_trap_policy(self) -> bool:
        """Linux >= 6.11 reads kvm-arm.wf{i,e}_trap_policy; older kernels ignore it."""
        return self.arch == "arm64" and self.kernel_version >= WFX_POLICY_MIN_KERNEL

    def effective_wfx_trap_policy(self, insn: str) -> str | None:
        """The host policy that actually applies: "trap"/"notrap", or None (not set, not
        honoured by this kernel, or an unknown value, which the kernel rejects at boot)."""
        v = self.wfx_trap_policy(insn)
        return v if self.honours_wfx_trap_policy and v in ("trap", "notrap") else None

    def describe_wfx_alternative(self, insns: list[str]) -> str:
        """One phrase naming the host-wide alternative and its current value here."""
        parts = []
        for i in insns:
            v = self.wfx_trap_policy(i)
            parts.append(f"kvm-arm.{i}_trap_policy={'notrap'} (now: {v if v is not None else 'unset'})")
        honour = ("honoured by this kernel" if self.honours_wfx_trap_policy
                  else f"NOT honoured by this {self.kernel_release} kernel")
        return (f"host-wide alternative: boot parameter {' and '.join(parts)}, Linux >= 6.11, "
                f"{honour}")


def probe_host() -> HostInfo:
    """Read everything from this machine (no root needed; unreadable items are reported)."""
    u = os.uname()
    cmdline = parse_cmdline(_read("/proc/cmdline") or "")
    params: dict[str, int | None] = {}
    for p in KVM_MODULE_PARAMS:
        t = _read(f"/sys/module/kvm/parameters/{p}")
        try:
            params[p] = int(t) if t is not None else None
        except ValueError:
            params[p] = None
    return HostInfo(
        arch=normalize_arch(u.machine),
        kernel_release=u.release,
        cmdline=cmdline,
        kvm_module_params=params,
        cpu_count=os.cpu_count() or 1,
    )


# ---------------------------------------------------------------------------------------------
# Mechanism probing

AVAILABLE, ABSENT, AMBIGUOUS = "available", "absent", "ambiguous"


@dataclass(frozen=True)
class Mechanism:
    """One idle mechanism on this host: status (available/absent/ambiguous) and why."""

    name: str
    status: str
    reason: str
    cap: int | None = None
    check_extension: int | None = None  # KVM_CHECK_EXTENSION answer (a mask for DISABLE_EXITS)
    arch: str | None = None


def _try(vm: Any, cap: int, *args: int) -> OSError | None:
    try:
        vm.enable_cap(cap, *args)
        return None
    except OSError as e:
        return e


def probe_mechanisms(target: int | Any | None = None, *, caps: CapTable | None = None,
                     host: HostInfo | None = None, trial: bool = True,
                     trial_vm: Any | None = None) -> list[Mechanism]:
    """Which idle mechanisms this host offers.

    target: a /dev/kvm system fd, a VM object (its CHECK_EXTENSION answers are used), or None
    (opens /dev/kvm). CHECK_EXTENSION is only a hint: with trial=True the decisive
    KVM_ENABLE_CAP calls are made on a THROWAWAY VM, never on `target`. That matters: enabling
    the WFx threshold even at its default 1 switches a VM from the stock heuristic to the
    threshold rule (WFI then untrapped when alone), so it is not harmless on a live VM.
    Values tried: threshold 1, DISABLE_EXITS 0 (a no-op), HALT_POLL = the module default.
    With trial=False a "yes" from CHECK_EXTENSION on a colliding number is reported ambiguous.
    trial_vm: use this (caller-owned, disposable) VM object for the trials instead of creating one.
    """
    from pyvmm.kvm.system import Kvm
    from pyvmm.kvm.vm import Vm

    caps = caps or cap_table()
    host = host or probe_host()
    own_kvm: Kvm | None = None
    kvm: Kvm | None = None
    if target is None:
        kvm = own_kvm = Kvm.open()
    elif isinstance(target, int):
        kvm = Kvm(target)  # the caller's fd: not closed here
    check = kvm.check_extension if kvm is not None else target.check_extension

    def check_safe(cap: int) -> int:
        try:
            return check(cap)
        except OSError:
            return 0

    own_vm: Vm | None = None
    try:
        if trial and trial_vm is None:
            if kvm is None:
                kvm = own_kvm = Kvm.open()
            trial_vm = own_vm = Vm(kvm)
        return _probe(caps, host, check_safe, trial_vm if trial else None)
    finally:
        if own_vm is not None:
            own_vm.close()
        if own_kvm is not None:
            own_kvm.close()


def _probe(caps: CapTable, host: HostInfo, check, vm: Any | None) -> list[Mechanism]:
    out: list[Mechanism] = []
    hp = host.kvm_module_params.get("halt_poll_ns") or 0
    trials = {
        "KVM_CAP_HALT_POLL": (hp,),
        "KVM_CAP_X86_DISABLE_EXITS": (0,),
        "KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH": (1,),
        "KVM_CAP_ARM_DISABLE_EXITS": (0,),
    }
    for name, args in trials.items():
        c = caps[name]
        ce = check(c.number)
        hint = f"CHECK_EXTENSION({c.number})={ce}"
        wrong_arch = c.arch is not None and c.arch != host.arch
        arch_note = f"; {c.arch}-only, this host is {host.arch}" if wrong_arch else ""
        coll = (f"; {c.number} is also upstream {c.collides_with}"
                if c.collides_with else "")
        if vm is None:
            if ce and c.collides_with:
                status, why = AMBIGUOUS, f"{hint}{coll}, so only KVM_ENABLE_CAP can tell"
            elif ce:
                status, why = AVAILABLE, f"{hint} (not verified by KVM_ENABLE_CAP)"
            else:
                status, why = ABSENT, f"{hint} (not verified by KVM_ENABLE_CAP)"
        else:
            err = _try(vm, c.number, *args)
            call = f"KVM_ENABLE_CAP({c.number}, {args[0]}) on a throwaway VM"
            if err is None:
                status, why = (ABSENT if wrong_arch else AVAILABLE), f"{hint}, {call} accepted{coll}"
            else:
                status = ABSENT
                why = f"{hint}, {call} failed: {errno.errorcode.get(err.errno, err.errno)}{coll}"
        out.append(Mechanism(c.short.lower(), status, why + arch_note, c.number, ce, c.arch))
    if host.arch == "arm64":
        for insn in ("wfi", "wfe"):
            v = host.wfx_trap_policy(insn)
            if host.honours_wfx_trap_policy:
                out.append(Mechanism(f"kvm-arm.{insn}_trap_policy", AVAILABLE,
                                     f"host-wide boot parameter, Linux {host.kernel_release} >= 6.11; "
                                     f"now {v if v is not None else 'unset'}", arch="arm64"))
            else:
                out.append(Mechanism(f"kvm-arm.{insn}_trap_policy", ABSENT,
                                     f"Linux {host.kernel_release} < 6.11 ignores it", arch="arm64"))
    return out
