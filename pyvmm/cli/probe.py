"""`pyvmm probe`: what this host's KVM offers pyvmm, as a table or JSON."""

from __future__ import annotations

import json
import os

import click

# (constant name in pyvmm_bindings.constants, what pyvmm uses it for, architectures where it matters)
CAPABILITIES = [
    ("KVM_CAP_USER_MEMORY", "guest RAM from host memory", ("x86_64", "arm64")),
    ("KVM_CAP_IMMEDIATE_EXIT", "clean vCPU stop/pause", ("x86_64", "arm64")),
    ("KVM_CAP_IRQFD", "device interrupts without a vCPU exit", ("x86_64", "arm64")),
    ("KVM_CAP_IOEVENTFD", "device notifications without a vCPU exit", ("x86_64", "arm64")),
    ("KVM_CAP_BINARY_STATS_FD", "per-VM and per-vCPU statistics", ("x86_64", "arm64")),
    ("KVM_CAP_HALT_POLL", "per-VM halt polling", ("x86_64", "arm64")),
    ("KVM_CAP_COALESCED_MMIO", "batched MMIO writes", ("x86_64", "arm64")),
    ("KVM_CAP_READONLY_MEM", "read-only guest memory", ("x86_64", "arm64")),
    ("KVM_CAP_ONE_REG", "register access by id", ("x86_64", "arm64")),
    ("KVM_CAP_DEVICE_CTRL", "in-kernel devices (vGIC)", ("arm64",)),
    ("KVM_CAP_ARM_PSCI_0_2", "vCPU power control", ("arm64",)),
    ("KVM_CAP_ARM_VM_IPA_SIZE", "guest physical address bits", ("arm64",)),
    ("KVM_CAP_ARM_PMU_V3", "guest PMU (--pmu)", ("arm64",)),
    ("KVM_CAP_ARM_SVE", "guest SVE", ("arm64",)),
    ("KVM_CAP_IRQCHIP", "in-kernel PIC/IOAPIC/LAPIC", ("x86_64",)),
    ("KVM_CAP_PIT2", "in-kernel PIT", ("x86_64",)),
    ("KVM_CAP_X86_DISABLE_EXITS", "HLT/PAUSE/MWAIT/CSTATE passthrough (allowed mask)", ("x86_64",)),
]


def collect(device: str) -> dict:
    from pyvmm_bindings import constants as c

    from pyvmm.arch import host_arch
    from pyvmm.kvm.system import Kvm
    from pyvmm.kvm.vm import Vm

    arch = host_arch()
    from pyvmm.kvm.system import default_device

    device = device or default_device()
    from pyvmm.idle.hostcontext import read_host_context

    report: dict = {"architecture": arch, "kernel": os.uname().release, "device": device,
                    "host_context": read_host_context().as_dict()}
    with Kvm.open(device) as kvm:
        report["api_version"] = kvm.api_version()
        report["max_vcpus"] = kvm.max_vcpus()
        report["recommended_vcpus"] = kvm.check_extension(c.KVM_CAP_NR_VCPUS)
        vm = Vm(kvm)
        try:
            caps = {}
            for name, purpose, arches in CAPABILITIES:
                if arch not in arches:
                    continue
                value = vm.check_extension(getattr(c, name))
                caps[name] = {"number": getattr(c, name), "value": value, "present": value > 0, "use": purpose}
            report["capabilities"] = caps
            if arch == "arm64":
                report["irqchips"] = _arm_irqchips(vm)
            report["idle"] = _idle_report(vm, arch)
        finally:
            vm.close()
    return report


def _arm_irqchips(vm) -> dict:
    from pyvmm_bindings import constants as c

    found = {}
    for name, dev in (("gicv3", c.KVM_DEV_TYPE_ARM_VGIC_V3), ("gicv3-its", c.KVM_DEV_TYPE_ARM_VGIC_ITS),
                      ("gicv2", c.KVM_DEV_TYPE_ARM_VGIC_V2)):
        try:
            vm.create_device(dev, test_only=True)
            found[name] = True
        except OSError:
            found[name] = False
    return found


def _idle_report(vm, arch: str) -> dict:
    from pyvmm.idle.report import idle_probe_report

    return idle_probe_report(vm, arch)


def render(report: dict, all_rows: bool = False) -> str:
    from pyvmm.idle.report import render_idle

    lines = [
        f"architecture      {report['architecture']} (kernel {report['kernel']})",
        f"KVM device        {report['device']}, API version {report['api_version']}",
        f"vCPUs             max {report['max_vcpus']}, recommended {report['recommended_vcpus']}",
    ]
    if "irqchips" in report:
        chips = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in report["irqchips"].items())
        lines.append(f"interrupt ctrl    {chips}")
    lines.append("")
    lines.append(f"{'capability':32} {'number':>6} {'value':>6}  used for")
    for name, info in report["capabilities"].items():
        value = info["value"] if info["present"] else "absent"
        lines.append(f"{name:32} {info['number']:>6} {value!s:>6}  {info['use']}")
    lines.append("")
    lines += render_idle(report["idle"], None if all_rows else report["architecture"])
    ctx = report["host_context"]
    lines += ["", "host scheduler (what a WFx threshold and its figures depend on)",
              f"  preemption        {ctx['preemption']['description']}",
              f"  CPUs              online {ctx['cpus']['online']}, {ctx['cpus']['description']}",
              f"  idle states       {ctx['cpuidle']}"]
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("--device", default=None, help="The KVM device node to probe (default: $PYVMM_KVM_DEVICE or /dev/kvm).")
@click.option("--all", "all_rows", is_flag=True,
              help="Also list the other architecture's idle controls (always absent here); --json has them all, "
                   "each with its arch.")
def probe(as_json: bool, device: str, all_rows: bool) -> int:
    """Report what this host's KVM offers: architecture, API version, vCPU limits, the capabilities pyvmm uses, and
    every idle/exit control (WFI/WFE trapping, halt polling, HLT/PAUSE passthrough) with where its setting comes from,
    and the host scheduler's context: preemption model and mode, whether CPUs differ, whether idle states are exposed.

    Probing the out-of-tree WFx capabilities creates a throwaway VM and tries a harmless KVM_ENABLE_CAP, because
    KVM_CHECK_EXTENSION alone cannot tell them from upstream capabilities with the same numbers.
    """
    report = collect(device)
    click.echo(json.dumps(report, indent=2, default=str) if as_json else render(report, all_rows))
    return 0
