"""One policy model for every idle mechanism, plus parsers for the CLI strings.

Fields mirror the knobs KVM offers (wfx.md): arm64 WFx threshold and passthrough, x86 exit
passthrough, halt polling, and vCPU pinning (which a per-VM threshold practically needs,
since userspace cannot otherwise control the runqueue depth the threshold compares against).
Validation errors are one line and name the offending part of the input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from pyvmm.errors import UsageError

WFX_NAMES = frozenset({"wfi", "wfe"})
X86_EXIT_NAMES = frozenset({"hlt", "pause", "mwait", "cstate"})
_U64 = 2**64
_U32 = 2**32  # KVM_CAP_HALT_POLL rejects args[0] that does not fit an unsigned int


class IdlePolicyError(RuntimeError):
    """A requested idle setting cannot be put in force (message says why and what instead)."""


class PolicyParseError(ValueError):
    """A CLI string or policy field is invalid (the message names the bad part)."""


def parse_name_set(text: str, allowed: frozenset[str], what: str) -> frozenset[str]:
    """"wfi,wfe" -> frozenset({"wfi", "wfe"}). "" or "none" is the empty set."""
    t = text.strip().lower()
    if t in ("", "none"):
        return frozenset()
    out = set()
    for part in t.split(","):
        p = part.strip()
        if p not in allowed:
            raise PolicyParseError(
                f"{what}: unknown {p!r} in {text!r} (allowed: {', '.join(sorted(allowed))})")
        out.add(p)
    return frozenset(out)


# Linux's largest NR_CPUS (CONFIG_MAXSMP).
MAX_CPU_NUMBER = 8192


def parse_cpu_list(text: str, what: str = "cpu list") -> set[int]:
    """Kernel cpulist syntax: "2", "2-3", "0,2-3"."""
    cpus: set[int] = set()
    for part in text.split(","):
        p = part.strip()
        lo, sep, hi = p.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise PolicyParseError(f"{what}: {p!r} is not a CPU number or range") from None
        if a < 0 or b < a:
            raise PolicyParseError(f"{what}: bad CPU range {p!r}")
        if b >= MAX_CPU_NUMBER:  # before the range is expanded: 0-100000000 would be a set of 10^8 numbers
            raise PolicyParseError(f"{what}: CPU {b} in {p!r} is beyond any host (CPU numbers are below "
                                   f"{MAX_CPU_NUMBER})")
        cpus.update(range(a, b + 1))
    return cpus


def parse_affinity(text: str) -> dict[int, set[int]]:
    """"0=2,1=3" or "0=2-3" or "0=2,4,1=3" -> {vcpu: host cpus}.

    Items are comma-separated; an item without "=" adds CPUs to the vCPU named before it,
    so the kernel's cpulist syntax can be used on the right-hand side.
    """
    result: dict[int, set[int]] = {}
    current: int | None = None
    for item in text.split(","):
        it = item.strip()
        if not it:
            raise PolicyParseError(f"cpu affinity {text!r}: empty item")
        if "=" in it:
            v, _, cpus = it.partition("=")
            try:
                current = int(v)
            except ValueError:
                raise PolicyParseError(f"cpu affinity {text!r}: vCPU {v.strip()!r} is not a number") from None
            if current < 0:
                raise PolicyParseError(f"cpu affinity {text!r}: vCPU {current} is negative")
            if current in result:
                raise PolicyParseError(f"cpu affinity {text!r}: vCPU {current} given twice")
            result[current] = parse_cpu_list(cpus, f"cpu affinity {text!r}, vCPU {current}")
        elif current is None:
            raise PolicyParseError(f"cpu affinity {text!r}: {it!r} before any VCPU=CPUS item")
        else:
            result[current] |= parse_cpu_list(it, f"cpu affinity {text!r}, vCPU {current}")
    return result


def parse_int(text: str, what: str, *, limit: int = _U64) -> int:
    """A non-negative integer (decimal or 0x...) below `limit`."""
    try:
        n = int(text.strip(), 0)
    except ValueError:
        raise PolicyParseError(f"{what}: {text!r} is not an integer") from None
    if not 0 <= n < limit:
        raise PolicyParseError(f"{what}: {n} is out of range 0..{limit - 1}")
    return n


@dataclass(frozen=True)
class IdlePolicy:
    """What the user asks for; None / empty means "leave the kernel's behaviour alone".

    wfx_trap_threshold: arm64 runqueue-depth threshold (0 = always trap, large = never).
    wfx_passthrough: arm64 instructions never trapped ("wfi", "wfe"); one-way per VM.
    halt_poll_ns: per-VM max halt-poll time (KVM_CAP_HALT_POLL).
    idle_exits: x86 exits passed through ("hlt", "pause", "mwait", "cstate"); before vCPUs only.
    allow_fallback: when a per-VM setting is refused, record it and carry on instead of failing.
    cpu_affinity: vCPU index -> host CPUs its thread may run on.
    """

    wfx_trap_threshold: int | None = None
    wfx_passthrough: frozenset[str] = frozenset()
    halt_poll_ns: int | None = None
    idle_exits: frozenset[str] = frozenset()
    allow_fallback: bool = False
    cpu_affinity: dict[int, set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept any iterable of names but store frozensets, so policies compare and hash sanely.
        object.__setattr__(self, "wfx_passthrough", frozenset(self.wfx_passthrough))
        object.__setattr__(self, "idle_exits", frozenset(self.idle_exits))
        validate_policy(self)

    @property
    def wants_arm(self) -> bool:
        return self.wfx_trap_threshold is not None or bool(self.wfx_passthrough)

    @property
    def wants_x86(self) -> bool:
        return bool(self.idle_exits)

    @classmethod
    def from_strings(cls, *, wfx_trap_threshold: str | None = None, wfx_passthrough: str = "",
                     halt_poll_ns: str | None = None, idle_exits: str = "",
                     allow_fallback: bool = False, cpu_affinity: str = "") -> "IdlePolicy":
        """Build from CLI option strings (each error names its option)."""
        return cls(
            wfx_trap_threshold=None if wfx_trap_threshold is None
            else parse_int(wfx_trap_threshold, "--wfx-trap-threshold"),
            wfx_passthrough=parse_name_set(wfx_passthrough, WFX_NAMES, "--wfx-passthrough"),
            halt_poll_ns=None if halt_poll_ns is None
            else parse_int(halt_poll_ns, "--halt-poll-ns", limit=_U32),
            idle_exits=parse_name_set(idle_exits, X86_EXIT_NAMES, "--idle-exits"),
            allow_fallback=allow_fallback,
            cpu_affinity=parse_affinity(cpu_affinity) if cpu_affinity.strip() else {},
        )


class IdleChange(NamedTuple):
    """A change to a running VM; None fields are left alone.

    wfx_passthrough / idle_exits are the full desired sets (so clearing can be detected).
    """

    wfx_trap_threshold: int | None = None
    wfx_passthrough: frozenset[str] | None = None
    halt_poll_ns: int | None = None
    idle_exits: frozenset[str] | None = None
    allow_fallback: bool = False


def validate_policy(p: IdlePolicy) -> None:
    """Raise PolicyParseError for values KVM would reject or that make no sense."""
    if p.wfx_trap_threshold is not None and not 0 <= p.wfx_trap_threshold < _U64:
        raise PolicyParseError(f"wfx_trap_threshold {p.wfx_trap_threshold} is out of range 0..2^64-1")
    if p.halt_poll_ns is not None and not 0 <= p.halt_poll_ns < _U32:
        raise PolicyParseError(f"halt_poll_ns {p.halt_poll_ns} is out of range 0..2^32-1")
    bad = p.wfx_passthrough - WFX_NAMES
    if bad:
        raise PolicyParseError(f"wfx_passthrough: unknown {', '.join(sorted(bad))} (allowed: wfe, wfi)")
    bad = p.idle_exits - X86_EXIT_NAMES
    if bad:
        raise PolicyParseError(
            f"idle_exits: unknown {', '.join(sorted(bad))} (allowed: {', '.join(sorted(X86_EXIT_NAMES))})")
    for v, cpus in p.cpu_affinity.items():
        if not isinstance(v, int) or v < 0:
            raise PolicyParseError(f"cpu_affinity: vCPU {v!r} is not a non-negative integer")
        if not cpus:
            raise PolicyParseError(f"cpu_affinity: vCPU {v} has an empty CPU set")
        if any(not isinstance(c, int) or c < 0 for c in cpus):
            raise PolicyParseError(f"cpu_affinity: vCPU {v} has a bad CPU in {sorted(cpus)!r}")


def check_affinity(affinity: Mapping[int, set[int]], cpus: int) -> None:
    """Refuse pinning that cannot work before anything runs: unknown vCPUs, CPUs that do not exist or are offline,
    or CPUs this process may not use."""
    if not affinity:
        return
    from pyvmm.idle.hostcpus import read_host_cpus

    allowed = os.sched_getaffinity(0)
    host = read_host_cpus()
    for v, want in sorted(affinity.items()):
        if v >= cpus:
            raise UsageError(f"cpu affinity names vCPU {v}, but the VM has {cpus} vCPU(s) (0..{cpus - 1})")
        host.check(set(want), f"cpu affinity {v}={','.join(map(str, sorted(want)))}")
        outside = sorted(set(want) - allowed)
        if outside:
            raise UsageError(f"cpu affinity {v}={','.join(map(str, sorted(want)))}: CPU(s) {outside} are not "
                             f"available to pyvmm (allowed: {','.join(map(str, sorted(allowed)))})")
