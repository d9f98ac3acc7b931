"""The capability numbers for idle tuning, in ONE place, with overrides.

Two of them are out of tree (wfx.md, arm64-host/README.md): their numbers are whatever the
patch that a given host kernel carries chose, so they must be overridable without a code
change: by environment variable (PYVMM_CAP_<NAME without KVM_CAP_>) or by the `overrides`
argument (the CLI's --cap-number NAME=N). Precedence: argument > environment > built-in.

236 is also upstream's KVM_CAP_PRE_FAULT_MEMORY: KVM_CHECK_EXTENSION(236) == 1 does not prove
the WFx threshold capability exists (see host.probe_mechanisms for how that is resolved).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Mapping

from pyvmm_bindings import constants as k

# x86 KVM_X86_DISABLE_EXITS_* bits (include/uapi/linux/kvm.h)
X86_DISABLE_EXITS_BITS: dict[str, int] = {
    "mwait": k.KVM_X86_DISABLE_EXITS_MWAIT, "hlt": k.KVM_X86_DISABLE_EXITS_HLT,
    "pause": k.KVM_X86_DISABLE_EXITS_PAUSE, "cstate": k.KVM_X86_DISABLE_EXITS_CSTATE,
}
# arm64 KVM_ARM_DISABLE_EXITS_* bits (out-of-tree patch, April 2026)
ARM_DISABLE_EXITS_BITS: dict[str, int] = {"wfi": 1, "wfe": 2}


class CapError(ValueError):
    """A bad capability name or number in an override."""


@dataclass(frozen=True)
class Cap:
    """One capability: its number and what is known about it."""

    name: str  # full name, e.g. "KVM_CAP_HALT_POLL"
    number: int
    arch: str | None  # "arm64", "x86_64" or None for any
    upstream: bool  # False: from an out-of-tree patch, number may differ per kernel
    source: str  # "built-in", "environment PYVMM_CAP_...", "argument"
    collides_with: str | None = None  # an upstream cap with the same number, if any

    @property
    def short(self) -> str:
        return self.name.removeprefix("KVM_CAP_")

    @property
    def env_var(self) -> str:
        return f"PYVMM_CAP_{self.short}"


# Upstream caps whose numbers out-of-tree patches are known to reuse (include/uapi/linux/kvm.h).
UPSTREAM_NUMBERS: dict[int, str] = {
    getattr(k, name): name for name in ("KVM_CAP_X86_DISABLE_EXITS", "KVM_CAP_HALT_POLL", "KVM_CAP_BINARY_STATS_FD",
                                        "KVM_CAP_PRE_FAULT_MEMORY")
}

# Upstream numbers come from the bindings; the out-of-tree ones are only defaults (see the module docstring).
_BUILTIN: tuple[Cap, ...] = (
    Cap("KVM_CAP_HALT_POLL", k.KVM_CAP_HALT_POLL, None, True, "built-in"),
    Cap("KVM_CAP_X86_DISABLE_EXITS", k.KVM_CAP_X86_DISABLE_EXITS, "x86_64", True, "built-in"),
    Cap("KVM_CAP_BINARY_STATS_FD", k.KVM_CAP_BINARY_STATS_FD, None, True, "built-in"),
    Cap("KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH", 236, "arm64", False, "built-in"),
    Cap("KVM_CAP_ARM_DISABLE_EXITS", 248, "arm64", False, "built-in"),
)
OVERRIDABLE = frozenset(c.name for c in _BUILTIN if not c.upstream)


def _canon(name: str) -> str:
    n = name.strip().upper().replace("-", "_")
    return n if n.startswith("KVM_CAP_") else "KVM_CAP_" + n


def _parse_number(text: str, what: str) -> int:
    try:
        n = int(text.strip(), 0)
    except ValueError:
        raise CapError(f"{what}: {text!r} is not a capability number") from None
    if not 0 <= n < 2**32:
        raise CapError(f"{what}: {n} is out of range 0..2^32-1")
    return n


def parse_cap_override(text: str) -> tuple[str, int]:
    """Parse one CLI --cap-number value, "ARM_DISABLE_EXITS=250" (KVM_CAP_ prefix optional)."""
    name, sep, num = text.partition("=")
    if not sep or not name.strip():
        raise CapError(f"--cap-number {text!r}: expected NAME=NUMBER")
    full = _canon(name)
    if full not in OVERRIDABLE:
        raise CapError(
            f"--cap-number {text!r}: {name.strip()!r} is not an out-of-tree capability; "
            f"overridable: {', '.join(sorted(c.removeprefix('KVM_CAP_') for c in OVERRIDABLE))}"
        )
    return full, _parse_number(num, f"--cap-number {text!r}")


@dataclass(frozen=True)
class CapTable:
    """The resolved table: look caps up by full or short name (`table["ARM_DISABLE_EXITS"]`)."""

    caps: Mapping[str, Cap]

    def __getitem__(self, name: str) -> Cap:
        try:
            return self.caps[_canon(name)]
        except KeyError:
            raise KeyError(f"unknown capability {name!r}") from None

    def number(self, name: str) -> int:
        return self[name].number

    def __iter__(self):
        return iter(self.caps.values())


def cap_table(overrides: Mapping[str, int] | None = None,
              environ: Mapping[str, str] | None = None) -> CapTable:
    """Resolve the table: built-in numbers, then PYVMM_CAP_* environment variables, then
    `overrides` ({name: number}, names with or without KVM_CAP_). Only out-of-tree caps can be
    overridden: upstream numbers are ABI and never differ between kernels."""
    env = os.environ if environ is None else environ
    caps = {c.name: c for c in _BUILTIN}
    for c in _BUILTIN:
        if c.upstream:
            continue
        if c.env_var in env:
            caps[c.name] = replace(c, number=_parse_number(env[c.env_var], c.env_var),
                                   source=f"environment {c.env_var}")
    for name, num in (overrides or {}).items():
        full = _canon(name)
        if full not in OVERRIDABLE:
            raise CapError(f"capability {name!r} cannot be overridden (only "
                           f"{', '.join(sorted(OVERRIDABLE))})")
        caps[full] = replace(caps[full], number=_parse_number(str(num), full), source="argument")
    # Mark collisions after overrides: moving a cap off 236 removes the ambiguity.
    for name, c in caps.items():
        if not c.upstream:
            other = UPSTREAM_NUMBERS.get(c.number)
            caps[name] = replace(c, collides_with=other)
    return CapTable(caps)
