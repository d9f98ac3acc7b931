"""`pyvmm run`: boot a guest and exit with its verdict."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pyvmm.config import ConsoleConfig, VmConfig, parse_size

# Feature areas add their own `pyvmm run` options and hooks, each in its own module (see pyvmm/cli/areas.py), so
# that idle tuning, devices and testing features grow without editing this file.
from pyvmm.cli.areas import AREAS, area_options


class SizeParam(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):  # type: ignore[override]
        if isinstance(value, int):
            return value
        from pyvmm.errors import UsageError

        try:
            return parse_size(value)
        except UsageError as err:
            self.fail(str(err), param, ctx)


@click.command()
@click.option("-k", "--kernel", type=click.Path(path_type=Path, dir_okay=False),
              help="Guest to boot: an arm64 Linux Image (or Image.gz), or a flat bare-metal payload (x86_64: real "
                   "mode at 0x1000:0000). Default: the bundled `hello` guest for this host's architecture.")
@click.option("-i", "--initrd", type=click.Path(path_type=Path, dir_okay=False),
              help="Initial ramdisk for a Linux kernel (arm64).")
@click.option("-p", "--cmdline", "--params", "cmdline", default="", show_default=True,
              help="Kernel command line (Linux guests). pyvmm adds the console settings it needs.")
@click.option("-m", "--memory", type=SizeParam(), default="256M", show_default=True,
              help="Guest RAM: a number in MiB, or with a K/M/G suffix (e.g. 512M, 2G).")
@click.option("-c", "--cpus", type=int, default=1, show_default=True, help="Number of vCPUs (1 to KVM's maximum).")
@click.option("--guest-arg", "guest_args", type=click.IntRange(0, 2**32 - 1), multiple=True,
              help="A 32-bit argument for a bare-metal guest, read in order from the test device's ARG register "
                   "(repeatable; see docs/MACHINES.md). Example: --guest-arg 1000 for 1000 exits.")
@click.option("--irqchip", type=click.Choice(["auto", "gicv3", "gicv2"]), default="auto", show_default=True,
              help="arm64 interrupt controller: the in-kernel vGICv3, vGICv2, or v3 when the host has it else v2.")
@click.option("--on-reboot", type=click.Choice(["exit", "restart"]), default="exit", show_default=True,
              help="When the guest reboots: end pyvmm with status 80, or restart the VM.")
@click.option("--dump-dtb", type=click.Path(path_type=Path, dir_okay=False),
              help="arm64: write the generated device tree blob to this file (inspect with `dtc -I dtb`).")
@click.option("--console-log", type=click.Path(path_type=Path, dir_okay=False),
              help="Also append everything the guest prints on its console to this file.")
@click.option("--no-stdin", is_flag=True, help="Do not forward stdin to the guest console.")
@click.option("--debug", is_flag=True, help="Log what pyvmm does and show tracebacks for errors.")
@area_options
def run(kernel, initrd, cmdline, memory, cpus, guest_args, irqchip, on_reboot, dump_dtb, console_log, no_stdin,
        debug, **area_values) -> int:
    """Boot a VM and run it until the guest powers off, exits or is stopped.

    Exit status: the guest's own status (test device EXIT, or 0 on power-off); 80 when the guest reboots with
    --on-reboot=exit; 130/143 when stopped by SIGINT/SIGTERM; 64-77 for pyvmm's own errors (sysexits.h).
    Ctrl-a x quits when stdin is a terminal.
    """
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="pyvmm: %(name)s: %(message)s")
    from pyvmm.vmm.console import ConsoleOutput
    from pyvmm.vmm.vmm import Vmm

    config = VmConfig(
        kernel=kernel, initrd=initrd, cmdline=cmdline, memory=memory, cpus=cpus, guest_args=list(guest_args),
        console=ConsoleConfig(stdin=not no_stdin, log_path=console_log), irqchip=irqchip, on_reboot=on_reboot,
        dtb_dump=dump_dtb, debug=debug,
    )
    log_file = None
    if console_log is not None:
        try:
            log_file = open(console_log, "ab")
        except OSError as err:
            from pyvmm.errors import MissingFileError

            raise MissingFileError(f"cannot open console log {console_log}: {err.strerror}") from None
    areas = [area.from_options(config, area_values) for area in AREAS]
    try:
        vmm = Vmm(config, output=ConsoleOutput(log=log_file))
        try:
            for area in areas:
                area.attach(vmm)
            outcome = vmm.run()
        finally:
            vmm.close()
    finally:
        if log_file is not None:
            log_file.close()
    status = outcome.status
    for area in areas:
        status = area.finish(vmm, outcome, status)
    if outcome.error:
        click.echo(f"pyvmm: error: {outcome.reason}", err=True)
    elif debug or outcome.status != 0:
        click.echo(f"pyvmm: {outcome.reason}", err=True)
    return status
