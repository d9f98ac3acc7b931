"""Per-architecture machine code: memory layout, boot protocol, interrupt controller, device tree or boot state.

Each architecture package offers `build(ctx: MachineContext) -> Machine` in its `machine` module.
"""

from __future__ import annotations

import importlib
import os

from pyvmm.errors import KvmUnavailableError

SUPPORTED = ("x86_64", "arm64")
_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def host_arch() -> str:
    machine = os.uname().machine  # what platform.machine() returns, without importing platform
    arch = _ALIASES.get(machine.lower())
    if arch is None:
        raise KvmUnavailableError(f"pyvmm runs on x86_64 and arm64 hosts, not {machine}")
    return arch


def machine_module(arch: str):
    if arch not in SUPPORTED:
        raise KvmUnavailableError(f"no machine for architecture {arch!r} (supported: {', '.join(SUPPORTED)})")
    return importlib.import_module(f"pyvmm.arch.{arch}.machine")
