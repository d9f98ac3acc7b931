"""The exits only arm64 has: none reach userspace today (PSCI SYSTEM_OFF/RESET arrive as the common SYSTEM_EVENT,
MMIO is common), so every exit is the common loop's."""

from __future__ import annotations

from pyvmm.arch.machine import ArchExits
from pyvmm.kvm.vcpu import Vcpu


def _none(reason: int) -> None:
    raise AssertionError(f"exit {reason} is not an arm64 exit")  # unreachable: `reasons` is empty


def exits(vcpu: Vcpu) -> ArchExits:
    return ArchExits(frozenset(), _none)
