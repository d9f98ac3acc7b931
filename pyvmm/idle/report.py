"""The idle/exit-control section of `pyvmm probe`: mechanisms with their status, and the host-wide settings."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


def idle_probe_report(vm: Any, arch: str) -> dict:
    from pyvmm.idle.host import probe_host, probe_mechanisms

    host = probe_host()
    mechanisms = probe_mechanisms(vm, host=host)
    return {
        "mechanisms": [asdict(m) for m in mechanisms],
        "host": {
            "kernel": host.kernel_release,
            "kvm-arm parameters": dict(host.kvm_arm_params),
            "wfi_trap_policy": host.wfx_trap_policy("wfi"),
            "wfe_trap_policy": host.wfx_trap_policy("wfe"),
            "trap_policy_honoured": host.honours_wfx_trap_policy,
            "kvm module parameters": dict(host.kvm_module_params),
            "cpus": host.cpu_count,
        },
    }


def render_idle(report: dict, arch: str | None = None) -> list[str]:
    """The table of idle controls; with `arch`, only the ones that apply to it (the rest are another architecture's,
    always absent here)."""
    lines = ["idle / exit controls"]
    for mech in report["mechanisms"]:
        if arch is not None and mech.get("arch") not in (None, arch):
            continue
        cap = f"cap {mech['cap']}" if mech.get("cap") is not None else "host"
        lines.append(f"  {mech['name']:34} {mech['status']:10} {cap:8} {mech['reason']}")
    host = report["host"]
    if host["wfi_trap_policy"] is not None or host["wfe_trap_policy"] is not None or host["trap_policy_honoured"]:
        honoured = "honoured" if host["trap_policy_honoured"] else "ignored by this kernel (needs Linux >= 6.11)"
        lines.append(f"  host kvm-arm.wfi_trap_policy={host['wfi_trap_policy'] or 'unset'} "
                     f"wfe_trap_policy={host['wfe_trap_policy'] or 'unset'} ({honoured})")
    params = ", ".join(f"{k}={'unreadable' if v is None else v}" for k, v in host["kvm module parameters"].items())
    lines.append(f"  kvm module: {params}")
    return lines
