"""`pyvmm run`: boot a guest and exit with its verdict."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pyvmm.cli.helpfmt import SectionedCommand
from pyvmm.cli.run_options import run_options
from pyvmm.spec import parse_size
from pyvmm.spec.core import IRQCHIPS
from pyvmm.spec.options import RunOptions, build_spec, network_mode


class SizeParam(click.ParamType):
    name = "SIZE"

    def convert(self, value: str | int, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from pyvmm.errors import UsageError

        try:
            return parse_size(value)
        except UsageError as err:
            self.fail(str(err), param, ctx)


SECTIONS = {
    "Guest": ["kernel", "initrd", "cmdline", "guest_args", "nodefaults", "on_reboot", "name"],
    "CPUs and memory": ["cpus", "memory", "irqchip", "pmu"],
    "Console": ["console_kind", "console_log", "no_stdin", "no_coalesced_console"],
    "Devices": ["disks", "nets", "rng", "vsock", "network"],
    "Idle tuning": ["wfx_trap_threshold", "wfx_passthrough", "halt_poll_ns", "idle_exits", "cpu_affinity",
                    "allow_fallback", "cap_numbers", "api_socket", "stats_json"],
    "Testing": ["test_timeout", "test_expect", "test_fail_on", "test_adds", "test_busybox", "test_command"],
    "Debug": ["debug", "loglevel", "dump_dtb"],
}
EXAMPLES = [
    ("pyvmm run", "the bundled hello guest"),
    ("pyvmm run -k exits --guest-arg 1000", "a bundled guest by name, with its argument (pyvmm guests lists them)"),
    ("pyvmm run --name web -k idle --guest-arg 100000000 &", "a named VM: pyvmm list, pyvmm ctl web state"),
    ("pyvmm run -k Image -i initrd.gz -p rdinit=/init -m 512M -c 2", "arm64 Linux"),
    ("pyvmm run -k Image --timeout 60 --expect 'login:'", "a boot test: exit 0 once the console matches"),
    ("pyvmm run -k Image -- sh -c 'cat /proc/cpuinfo'", "run a command in the guest (arm64), get its status"),
]


@click.command(cls=SectionedCommand, sections=SECTIONS, examples=EXAMPLES)
@click.option("-k", "--kernel", type=click.Path(path_type=Path),
              help="Guest to boot: a bundled guest by name (hello, exits, idle, hostile: see `pyvmm guests`; a file "
                   "of that name in the current directory wins, write ./NAME to be explicit), an arm64 Linux Image "
                   "(or Image.gz), or a flat bare-metal payload (arm64: a raw binary such as a kvm-unit-tests .flat, "
                   "at RAM + 0x80000; x86_64: real mode at 0x1000:0000). Default: hello.")
@click.option("-i", "--initrd", type=click.Path(path_type=Path),
              help="Initial ramdisk for a Linux kernel, or a raw binary's data (arm64), e.g. kvm-unit-tests' environ.")
@click.option("-p", "--cmdline", "--params", "--append", "cmdline", default="",
              help="Kernel command line (--append as in QEMU and virtme-ng, --params as in kvmtool). pyvmm adds the "
                   "console settings a Linux guest needs, except for a raw binary and with --nodefaults, which get "
                   "exactly this text. arm64 only: ignored with a warning on x86_64, whose flat payloads have none "
                   "(use --guest-arg).")
@click.option("-m", "--memory", "--mem", "memory", type=SizeParam(), default="256M", show_default=True,
              help="Guest RAM: a number in MiB, or with a K/M/G suffix (e.g. 512M, 2G).")
@click.option("-c", "--cpus", type=int, default=1, show_default=True, help="Number of vCPUs (1 to KVM's maximum).")
@click.option("--guest-arg", "guest_args", type=click.IntRange(0, 2**32 - 1), multiple=True,
              help="A 32-bit argument for a bare-metal guest, read in order from the test device's ARG register "
                   "(repeatable; see docs/MACHINES.md). Example: --guest-arg 1000 for 1000 exits.")
@click.option("--irqchip", type=click.Choice(IRQCHIPS), default="auto", show_default=True,
              help="arm64 interrupt controller: the in-kernel vGICv3, vGICv3 with an ITS (MSIs), vGICv2, or v3 when "
                   "the host has it else v2. kvmtool's --irqchip=NAME spelling works too.")
@click.option("--pmu", is_flag=True,
              help="arm64: give the guest a PMUv3 (KVM_ARM_VCPU_PMU_V3, overflow interrupt PPI 7), e.g. for perf. "
                   "Refused on a host whose KVM has no PMU for guests.")
@click.option("--nodefaults", is_flag=True,
              help="Use the -p command line exactly as given: no console settings added (kvmtool's option).")
@click.option("--on-reboot", type=click.Choice(["exit", "restart"]), default="exit", show_default=True,
              help="When the guest reboots: end pyvmm with status 80, or restart the VM.")
@click.option("--dump-dtb", type=click.Path(path_type=Path),
              help="arm64: write the generated device tree blob to this file (inspect with `dtc -I dtb`); refused "
                   "on x86_64, which has no device tree.")
@click.option("--console-log", type=click.Path(path_type=Path),
              help="Also append everything the guest prints on its console to this file.")
@click.option("--no-stdin", is_flag=True, help="Do not forward stdin to the guest console.")
@click.option("--debug", is_flag=True, help="Log what pyvmm does and show tracebacks for errors.")
@click.option("--loglevel", type=click.Choice(["error", "warning", "info", "debug"]), default="warning",
              show_default=True, help="How much pyvmm logs on stderr (kvmtool's option); debug as --debug's log.")
@click.option("--name", metavar="NAME",
              help="The VM's name in `pyvmm list` and for `pyvmm ctl NAME` (default: guest-PID, shown with --debug). "
                   "Its control socket is NAME.sock in $XDG_RUNTIME_DIR/pyvmm (root: /run/pyvmm) unless "
                   "--api-socket puts it elsewhere.")
@click.option("--network", metavar="mode=none",
              help="kvmtool's spelling for no network device (pyvmm's default); use --net for one.")
@run_options
def run(kernel: Path | None, initrd: Path | None, cmdline: str, memory: int, cpus: int, guest_args: tuple[int, ...],
        irqchip: str, pmu: bool, nodefaults: bool, on_reboot: str, dump_dtb: Path | None, console_log: Path | None,
        no_stdin: bool, debug: bool, loglevel: str, name: str | None, network: str | None,
        **options: object) -> int:
    """Boot a VM and run it until the guest powers off, exits or is stopped.

    Exit status: the guest's own status (test device EXIT, or 0 on power-off); 80 when the guest reboots with
    --on-reboot=exit; 130/143 when stopped by SIGINT/SIGTERM; 64-77 for pyvmm's own errors (sysexits.h).
    Ctrl-a x quits when stdin is a terminal.
    """
    network_mode(network)
    if debug or loglevel in ("info", "debug"):
        import logging

        logging.basicConfig(level=logging.DEBUG if debug else getattr(logging, loglevel.upper()), stream=sys.stderr,
                            format="pyvmm: %(name)s: %(message)s")
    from pyvmm.api import registry
    from pyvmm.cli.collector import CollectorOnceStarted
    from pyvmm.vmm.runner import run_vm

    name = registry.check_name(name) if name else registry.generated_name()
    if options.get("api_socket") is None:
        options["api_socket"] = str(registry.claim(name))
    if debug:
        click.echo(f"pyvmm: VM {name}, control socket {options['api_socket']}", err=True)
    if not no_stdin and sys.stdin.isatty():
        click.echo(f"pyvmm: Ctrl-a x quits ({name} in `pyvmm list`)", err=True)
    spec = build_spec(name=name, kernel=kernel, initrd=initrd, cmdline=cmdline, memory=memory, cpus=cpus,
                      guest_args=guest_args, irqchip=irqchip, pmu=pmu, nodefaults=nodefaults, on_reboot=on_reboot,
                      dump_dtb=dump_dtb,
                      console_log=console_log, stdin=not no_stdin, debug=debug,
                      options=RunOptions.from_mapping(options))
    result = run_vm(spec, extra=[CollectorOnceStarted()])
    outcome, final = result.outcome, result.final
    if final.note is not None:
        click.echo(f"pyvmm: {'error: ' if final.error else ''}{final.note}", err=True)
    if outcome.error:
        click.echo(f"pyvmm: error: {outcome.reason}", err=True)
    elif debug or outcome.status != 0:
        click.echo(f"pyvmm: {outcome.reason}", err=True)
    return result.status
