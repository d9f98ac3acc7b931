"""The `pyvmm run` options beyond the core ones: idle tuning, virtio devices, testing. Their parameter names are those
of pyvmm.spec.options.RunOptions, which turns their values into the VmSpec's parts (the same for Machine(options=)).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import click

from pyvmm.errors import UsageError
from pyvmm.spec.options import regex


def _regex(ctx: click.Context, param: click.Parameter, value: str | None) -> re.Pattern[str] | None:
    try:
        return regex(value, f"--{param.name}")
    except UsageError as err:
        raise click.BadParameter(str(err).split(": ", 1)[-1]) from None


IDLE_OPTIONS: list[Callable] = [
    click.option("--wfx-trap-threshold", metavar="N",
                 help="arm64: trap WFI/WFE only when more than N tasks run on the vCPU's host CPU (0 = always trap, "
                      "a large N = practically never). Needs KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH."),
    click.option("--wfx-passthrough", metavar="wfi,wfe", default="",
                 help="arm64: never trap these instructions for this VM (one-way; KVM_CAP_ARM_DISABLE_EXITS). "
                      "An idle vCPU then looks 100% busy to the host: pin vCPUs and do not over-commit."),
    click.option("--halt-poll-ns", metavar="N",
                 help="Per-VM maximum halt-polling time in ns (KVM_CAP_HALT_POLL); default: the host's "
                      "kvm.halt_poll_ns, which `pyvmm probe` shows."),
    click.option("--idle-exits", metavar="hlt,pause,mwait,cstate", default="",
                 help="x86_64: let the guest execute these itself instead of exiting (KVM_CAP_X86_DISABLE_EXITS)."),
    click.option("--cpu-affinity", metavar="VCPU=CPUS,...", default="",
                 help="Pin vCPU threads to host CPUs, e.g. 0=2,1=3 or 0=2-3 (the runqueue depth a WFx threshold "
                      "compares against depends on it)."),
    click.option("--allow-fallback", is_flag=True,
                 help="When the kernel refuses a per-VM idle setting, run anyway with the kernel's behaviour "
                      "(recorded in the policy report) instead of refusing to start."),
    click.option("--cap-number", "cap_numbers", metavar="NAME=N", multiple=True,
                 help="Capability number of an out-of-tree cap on this kernel, e.g. ARM_DISABLE_EXITS=250 "
                      "(repeatable; also PYVMM_CAP_<NAME>=N)."),
    click.option("--api-socket", metavar="PATH",
                 help="Serve the control socket (JSON lines, docs/API.md) here while the VM runs; see `pyvmm ctl`."),
    click.option("--stats-json", metavar="FILE",
                 help="At exit, write the vCPU statistics totals, host CPU time per vCPU, the idle policy in force "
                      "and the guest's test-device DATA values to FILE as JSON."),]

DEVICE_OPTIONS: list[Callable] = [
    click.option("-d", "--disk", "disks", multiple=True, metavar="PATH[,ro][,serial=ID][,cache=MODE]",
                 help="A virtio-blk disk on a raw image file (repeatable: vda, vdb, ... in order). ro: read-only "
                      "(guest writes fail, the file is never modified); serial: the ID the guest reads (20 bytes at "
                      "most); cache: writeback (default; the guest's flush fsyncs), writethrough (O_DSYNC) or unsafe "
                      "(flushes ignored). The file is locked: a second pyvmm cannot use it for writing."),
    click.option("--net", "nets", multiple=True, metavar="tap=NAME[,mac=XX:XX:XX:XX:XX:XX]",
                 help="A virtio-net interface on host TAP device NAME (created if absent; needs CAP_NET_ADMIN). "
                      "--debug prints at exit the frames and bytes each way and the frames the TAP dropped."),
    click.option("--console", "console_kind", type=click.Choice(["serial", "virtio"]), default="serial",
                 show_default=True,
                 help="Guest console: the UART (ttyS0), or a virtio-console (hvc0; the UART stays for early output "
                      "and pyvmm adds `console=hvc0 earlycon` unless -p names a console). Needs virtio_mmio and "
                      "virtio_console in the guest kernel."),
    click.option("--no-coalesced-console", is_flag=True,
                 help="Make every guest access to the UART exit to pyvmm, instead of letting KVM queue transmit "
                      "writes in its coalesced MMIO/PIO ring and (arm64) serve side-effect-free register reads "
                      "from a read-only page (the default where KVM offers them). The output is the same; for "
                      "comparisons."),
    click.option("--rng", is_flag=True, help="A virtio-rng device fed from the host's getrandom() (/dev/hwrng)."),
    click.option("--vsock", "vsock", metavar="cid=N",
                 help="A virtio-vsock device with guest CID N (3 or more), served by the host kernel's vhost-vsock "
                      "(/dev/vhost-vsock; modprobe vhost_vsock). Host programs reach the guest at (N, port)."),]

TESTING_OPTIONS: list[Callable] = [
    click.option("--timeout", "test_timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                 help="Stop the VM after SECONDS and exit with 124 (as timeout(1)). With --expect: the time the "
                      "console has to match."),
    click.option("--expect", "test_expect", callback=_regex, metavar="REGEX",
                 help="Stop the VM and exit 0 as soon as a console line matches REGEX (Python syntax). Fails (1) if "
                      "the guest ends first, 124 on --timeout."),
    click.option("--fail-on", "test_fail_on", callback=_regex, metavar="REGEX",
                 help="Stop the VM and exit 1 as soon as a console line matches REGEX (e.g. 'Kernel panic|BUG:')."),
    click.option("--add", "test_adds", multiple=True, metavar="HOST:GUEST",
                 help="With -- CMD: copy a host file or directory into the generated initramfs (repeatable)."),
    click.option("--busybox", "test_busybox", type=click.Path(path_type=Path), metavar="PATH",
                 help="With -- CMD: the static busybox for the guest (default: the host's, when it is a static "
                      "binary of the guest's architecture, e.g. busybox-static on an arm64 host)."),
    click.argument("test_command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD ARGS...]"),]


def run_options(function: Callable) -> Callable:
    """Apply every option above to `function`, in the order `pyvmm run --help` lists them."""
    for option in reversed(IDLE_OPTIONS + DEVICE_OPTIONS + TESTING_OPTIONS):
        function = option(function)
    return function
