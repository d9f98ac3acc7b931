"""Apply an IdlePolicy to a VM and record what is in force and where it came from.

Rules (kvm-reference.md, arm64-host/README.md):
* KVM_CHECK_EXTENSION is only a hint (236 collides with upstream KVM_CAP_PRE_FAULT_MEMORY);
  whether KVM_ENABLE_CAP succeeds decides.
* A refused per-VM setting is an error naming what the kernel lacks and the host-wide
  alternative, unless the policy allows fallback (then the fallback is recorded).
* DISABLE_EXITS is one-way: asking to clear a set bit is refused before touching the kernel.
* x86 DISABLE_EXITS only works before vCPUs exist, and only for bits in the allowed mask.
* For WFI and WFE separately the state in force follows: VM DISABLE_EXITS bit > host boot
  parameter (Linux >= 6.11) > VM threshold > kernel default.
"""

from __future__ import annotations

import errno as errno_mod
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable

from .caps import ARM_DISABLE_EXITS_BITS, X86_DISABLE_EXITS_BITS, CapTable, cap_table
from .host import HostInfo, probe_host, normalize_arch
from .policy import WFX_NAMES, IdleChange, IdlePolicy, IdlePolicyError  # noqa: F401 (re-exported)

# Where a setting in force came from.
SRC_VM_DISABLE_EXITS = "per-VM cap KVM_CAP_ARM_DISABLE_EXITS"
SRC_VM_THRESHOLD = "per-VM cap KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH"
SRC_VM_X86_DISABLE_EXITS = "per-VM cap KVM_CAP_X86_DISABLE_EXITS"
SRC_VM_HALT_POLL = "per-VM cap KVM_CAP_HALT_POLL"
SRC_HOST_PARAM = "host boot parameter"
SRC_MODULE_PARAM = "kvm module parameter"
SRC_DEFAULT = "kernel default"


@dataclass(frozen=True)
class ExitState:
    """How one instruction (wfi, wfe, hlt, ...) is handled, and which rule decided it."""

    behaviour: str  # e.g. "not trapped", "trapped", "not trapped while <= 2 tasks run on the CPU"
    source: str  # one of the SRC_* constants
    detail: str = ""  # e.g. "kvm-arm.wfi_trap_policy=notrap" or a shadowing note


@dataclass(frozen=True)
class AppliedPolicy:
    """What is in force for a VM after apply_before_vcpus / apply_live."""

    arch: str
    exits: dict[str, ExitState]
    wfx_trap_threshold: int | None = None  # set on the VM (None: never set)
    wfx_passthrough: frozenset[str] = frozenset()  # DISABLE_EXITS bits set on the VM
    idle_exits: frozenset[str] = frozenset()  # x86 DISABLE_EXITS bits set on the VM
    halt_poll_ns: int | None = None  # value in force (per-VM or module default)
    halt_poll_source: str = SRC_DEFAULT
    fallbacks: tuple[str, ...] = ()  # requests refused but tolerated (allow_fallback)
    notes: tuple[str, ...] = ()  # warnings: shadowed settings, costs


def _errname(e: OSError) -> str:
    return errno_mod.errorcode.get(e.errno or 0, str(e.errno))


def _mask(names: Iterable[str], bits: dict[str, int]) -> int:
    m = 0
    for n in names:
        m |= bits[n]
    return m


def _names(mask: int, bits: dict[str, int]) -> list[str]:
    return sorted(n for n, b in bits.items() if mask & b)


class _Ctx:
    """Shared state of one apply call."""

    def __init__(self, vm: Any, arch: str, host: HostInfo, caps: CapTable, allow_fallback: bool):
        self.vm, self.arch, self.host, self.caps = vm, arch, host, caps
        self.allow_fallback = allow_fallback
        self.fallbacks: list[str] = []
        self.notes: list[str] = []

    def hint(self, cap: int) -> str:
        try:
            return f"CHECK_EXTENSION({cap})={self.vm.check_extension(cap)}"
        except OSError as e:
            return f"CHECK_EXTENSION({cap}) failed: {_errname(e)}"

    def refused(self, msg: str) -> None:
        """Raise, or record the fallback when allowed."""
        if not self.allow_fallback:
            raise IdlePolicyError(msg)
        self.fallbacks.append(msg)


def _arm_refusal(ctx: _Ctx, capname: str, args: int, err: OSError, insns: list[str]) -> str:
    c = ctx.caps[capname]
    coll = f"; {c.number} is also upstream {c.collides_with}" if c.collides_with else ""
    return (f"kernel {ctx.host.kernel_release} lacks {c.name} (cap {c.number} from {c.source}: "
            f"{ctx.hint(c.number)}, KVM_ENABLE_CAP({c.number}, {args}) -> {_errname(err)}{coll}); "
            f"{ctx.host.describe_wfx_alternative(insns)}; or give the right number with "
            f"--cap-number {c.short}=N / {c.env_var}")


def _apply_arm_passthrough(ctx: _Ctx, want: frozenset[str], have: frozenset[str]) -> frozenset[str]:
    add = want - have
    if not add:
        return have
    c = ctx.caps["ARM_DISABLE_EXITS"]
    mask = _mask(add, ARM_DISABLE_EXITS_BITS)
    try:
        ctx.vm.enable_cap(c.number, mask)
    except OSError as e:
        ctx.refused(f"per-VM {'/'.join(sorted(add)).upper()} passthrough refused: "
                    + _arm_refusal(ctx, "ARM_DISABLE_EXITS", mask, e, sorted(add)))
        return have
    ctx.notes.append("WFx passthrough: an idle vCPU thread looks 100% busy to the host and keeps "
                     "its CPU out of deep idle; pin vCPUs and do not over-commit")
    return have | add


def _apply_arm_threshold(ctx: _Ctx, value: int, current: int | None) -> int | None:
    c = ctx.caps["ARM_WFX_TRAP_RUNQUEUE_DEPTH"]
    try:
        ctx.vm.enable_cap(c.number, value)
    except OSError as e:
        ctx.refused(f"per-VM WFx trap threshold {value} refused: "
                    + _arm_refusal(ctx, "ARM_WFX_TRAP_RUNQUEUE_DEPTH", value, e, ["wfi", "wfe"]))
        return current
    return value


def _apply_halt_poll(ctx: _Ctx, value: int) -> bool:
    c = ctx.caps["HALT_POLL"]
    try:
        ctx.vm.enable_cap(c.number, value)
        return True
    except OSError as e:
        cur = ctx.host.kvm_module_params.get("halt_poll_ns")
        ctx.refused(f"per-VM halt_poll_ns {value} refused: kernel {ctx.host.kernel_release} lacks "
                    f"{c.name} ({ctx.hint(c.number)}, KVM_ENABLE_CAP -> {_errname(e)}); host-wide "
                    f"alternative: /sys/module/kvm/parameters/halt_poll_ns (now: "
                    f"{cur if cur is not None else 'unreadable'})")
        return False


def _apply_x86_exits(ctx: _Ctx, want: frozenset[str]) -> frozenset[str]:
    c = ctx.caps["X86_DISABLE_EXITS"]
    try:
        allowed = ctx.vm.check_extension(c.number)
    except OSError:
        allowed = 0
    # For this upstream cap the mask is authoritative: KVM_ENABLE_CAP rejects any other bit.
    bad = sorted(n for n in want if not X86_DISABLE_EXITS_BITS[n] & allowed)
    if bad:
        ctx.refused(f"x86 exit passthrough of {', '.join(bad)} not allowed by kernel "
                    f"{ctx.host.kernel_release}: {c.name} mask is {allowed:#x} "
                    f"({', '.join(_names(allowed, X86_DISABLE_EXITS_BITS)) or 'none'}); host-wide "
                    f"alternative: none (the guest keeps trapping; tune halt polling instead)")
        want = frozenset(n for n in want if n not in bad)
    if not want:
        return frozenset()
    mask = _mask(want, X86_DISABLE_EXITS_BITS)
    try:
        ctx.vm.enable_cap(c.number, mask)
    except OSError as e:
        ctx.refused(f"x86 exit passthrough {mask:#x} refused: KVM_ENABLE_CAP({c.number}) -> "
                    f"{_errname(e)} (it must come before any vCPU is created)")
        return frozenset()
    if "hlt" in want:
        ctx.notes.append("HLT passthrough: do not advertise KVM_FEATURE_PV_UNHALT to the guest; "
                         "some nested hosts fail KVM entry with it")
    return want


def _arm_exit_states(host: HostInfo, passthrough: frozenset[str],
                     threshold: int | None) -> dict[str, ExitState]:
    """The decision order of arm64-host/README.md, for WFI and WFE separately."""
    out: dict[str, ExitState] = {}
    for insn in ("wfi", "wfe"):
        param = host.effective_wfx_trap_policy(insn)
        if insn in passthrough:
            shadow = f"overrides kvm-arm.{insn}_trap_policy={param}" if param else ""
            out[insn] = ExitState("not trapped", SRC_VM_DISABLE_EXITS, shadow)
        elif param is not None:
            shadow = (f"per-VM threshold {threshold} is set but shadowed"
                      if threshold is not None else "")
            out[insn] = ExitState("trapped" if param == "trap" else "not trapped", SRC_HOST_PARAM,
                                  f"kvm-arm.{insn}_trap_policy={param}" + (f"; {shadow}" if shadow else ""))
        elif threshold is not None:
            beh = ("trapped (threshold 0: the vCPU thread itself counts)" if threshold == 0
                   else f"not trapped while <= {threshold} tasks run on the CPU, trapped otherwise")
            out[insn] = ExitState(beh, SRC_VM_THRESHOLD, f"threshold {threshold}")
        elif insn == "wfe":
            out[insn] = ExitState("not trapped when the vCPU thread is alone on its CPU, else trapped",
                                  SRC_DEFAULT)
        else:
            out[insn] = ExitState("trapped unless alone on its CPU AND GICv4 direct injection is "
                                  "in use (so trapped on most hosts)", SRC_DEFAULT)
        ignored = host.wfx_trap_policy(insn)
        if ignored is not None and param is None and insn not in passthrough:
            out[insn] = replace(out[insn], detail=(out[insn].detail + "; " if out[insn].detail else "")
                                + f"kvm-arm.{insn}_trap_policy={ignored} ignored by {host.kernel_release}")
    return out


def _x86_exit_states(idle_exits: frozenset[str]) -> dict[str, ExitState]:
    return {n: ExitState("not trapped (runs in the guest)", SRC_VM_X86_DISABLE_EXITS) if n in idle_exits
            else ExitState("trapped", SRC_DEFAULT) for n in ("hlt", "pause", "mwait", "cstate")}


def _finish(ctx: _Ctx, threshold: int | None, wfx: frozenset[str], x86: frozenset[str],
            halt_poll: int | None, prev: AppliedPolicy | None) -> AppliedPolicy:
    if ctx.arch == "arm64":
        exits = _arm_exit_states(ctx.host, wfx, threshold)
        if threshold is not None and threshold > 0 and not wfx >= WFX_NAMES:
            ctx.notes.append("a runqueue-depth threshold depends on how many tasks share the vCPU's "
                             "CPU: pin vCPUs (cpu_affinity) to make it predictable")
    else:
        exits = _x86_exit_states(x86)
    if halt_poll is not None:
        hp, hp_src = halt_poll, SRC_VM_HALT_POLL
    elif prev is not None:
        hp, hp_src = prev.halt_poll_ns, prev.halt_poll_source
    else:
        hp, hp_src = ctx.host.kvm_module_params.get("halt_poll_ns"), SRC_MODULE_PARAM
    old_fb = prev.fallbacks if prev else ()
    old_notes = prev.notes if prev else ()
    notes = tuple(dict.fromkeys(old_notes + tuple(ctx.notes)))  # de-duplicated, ordered
    return AppliedPolicy(ctx.arch, exits, threshold, wfx, x86, hp, hp_src,
                         old_fb + tuple(ctx.fallbacks), notes)


def apply_before_vcpus(vm: Any, policy: IdlePolicy, host_arch: str, *,
                       host: HostInfo | None = None, caps: CapTable | None = None) -> AppliedPolicy:
    """Apply `policy` to a VM that has no vCPUs yet (x86 DISABLE_EXITS requires that).

    Order: DISABLE_EXITS (so its one-way bits are in place first), threshold, halt polling.
    """
    arch = normalize_arch(host_arch)
    ctx = _Ctx(vm, arch, host or probe_host(), caps or cap_table(), policy.allow_fallback)
    if arch == "arm64" and policy.idle_exits:
        raise IdlePolicyError(f"idle_exits {', '.join(sorted(policy.idle_exits))} are x86 exits; "
                              f"on arm64 use wfx_passthrough (wfi, wfe)")
    if arch != "arm64" and policy.wants_arm:
        raise IdlePolicyError(f"WFI/WFE settings (threshold, wfx passthrough) are arm64-only; this "
                              f"host is {arch}: use idle_exits (hlt, pause, mwait, cstate)")
    threshold: int | None = None
    wfx: frozenset[str] = frozenset()
    x86: frozenset[str] = frozenset()
    if arch == "arm64":
        wfx = _apply_arm_passthrough(ctx, policy.wfx_passthrough, frozenset())
        if policy.wfx_trap_threshold is not None:
            threshold = _apply_arm_threshold(ctx, policy.wfx_trap_threshold, None)
    elif policy.idle_exits:
        x86 = _apply_x86_exits(ctx, policy.idle_exits)
    hp = policy.halt_poll_ns if (policy.halt_poll_ns is not None
                                 and _apply_halt_poll(ctx, policy.halt_poll_ns)) else None
    return _finish(ctx, threshold, wfx, x86, hp, None)


def apply_live(vm: Any, change: IdleChange, applied: AppliedPolicy, *,
               host: HostInfo | None = None, caps: CapTable | None = None) -> AppliedPolicy:
    """Change a running VM's idle settings; `applied` is what is in force now.

    Refusals that need no kernel call (clearing a one-way bit, x86 exits after vCPUs exist,
    wrong architecture) are raised before anything is touched, so a failed call leaves the
    VM as it was.
    """
    arch = applied.arch
    if change.wfx_passthrough is not None:
        if arch != "arm64":
            raise IdlePolicyError(f"wfx passthrough is arm64-only; this VM is {arch}")
        cleared = applied.wfx_passthrough - frozenset(change.wfx_passthrough)
        if cleared:
            raise IdlePolicyError(
                f"cannot turn {', '.join(sorted(cleared)).upper()} trapping back on: "
                f"KVM_CAP_ARM_DISABLE_EXITS is one-way (restart the VM to trap again)")
        bad = frozenset(change.wfx_passthrough) - WFX_NAMES
        if bad:
            raise IdlePolicyError(f"wfx passthrough: unknown {', '.join(sorted(bad))} (allowed: wfe, wfi)")
    if change.wfx_trap_threshold is not None and arch != "arm64":
        raise IdlePolicyError(f"the WFx trap threshold is arm64-only; this VM is {arch}")
    if change.idle_exits is not None and frozenset(change.idle_exits) != applied.idle_exits:
        raise IdlePolicyError("x86 exit passthrough (KVM_CAP_X86_DISABLE_EXITS) can only be set "
                              "before vCPUs are created; restart the VM with the new idle_exits")
    if change.wfx_trap_threshold is not None and not 0 <= change.wfx_trap_threshold < 2**64:
        raise IdlePolicyError(f"wfx_trap_threshold {change.wfx_trap_threshold} out of range")
    if change.halt_poll_ns is not None and not 0 <= change.halt_poll_ns < 2**32:
        raise IdlePolicyError(f"halt_poll_ns {change.halt_poll_ns} out of range 0..2^32-1")
    ctx = _Ctx(vm, arch, host or probe_host(), caps or cap_table(), change.allow_fallback)
    wfx = applied.wfx_passthrough
    threshold = applied.wfx_trap_threshold
    if change.wfx_passthrough is not None:
        wfx = _apply_arm_passthrough(ctx, frozenset(change.wfx_passthrough), wfx)
    if change.wfx_trap_threshold is not None:
        threshold = _apply_arm_threshold(ctx, change.wfx_trap_threshold, threshold)
    hp = change.halt_poll_ns if (change.halt_poll_ns is not None
                                 and _apply_halt_poll(ctx, change.halt_poll_ns)) else None
    return _finish(ctx, threshold, wfx, applied.idle_exits, hp, applied)


def apply_affinity(vcpus: Iterable[Any], policy: IdlePolicy) -> dict[int, set[int]]:
    """Pin each running vCPU thread named in policy.cpu_affinity; returns what was set.

    Raises IdlePolicyError for a vCPU that does not exist or has no thread yet, or for CPUs
    outside this process's allowed set (the kernel would refuse with EINVAL anyway).
    """
    by_index = {v.index: v for v in vcpus}
    allowed = os.sched_getaffinity(0)
    done: dict[int, set[int]] = {}
    for idx, cpus in sorted(policy.cpu_affinity.items()):
        v = by_index.get(idx)
        if v is None:
            raise IdlePolicyError(f"cpu affinity for vCPU {idx}: the VM has vCPUs {sorted(by_index)}")
        if v.thread_id is None:
            raise IdlePolicyError(f"cpu affinity for vCPU {idx}: its thread is not running yet")
        outside = sorted(set(cpus) - allowed)
        if outside:
            raise IdlePolicyError(f"cpu affinity for vCPU {idx}: CPUs {outside} not in this process's "
                                  f"allowed set {sorted(allowed)}")
        os.sched_setaffinity(v.thread_id, cpus)
        done[idx] = set(os.sched_getaffinity(v.thread_id))
    return done
