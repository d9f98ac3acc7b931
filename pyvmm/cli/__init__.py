"""The `pyvmm` command line (click). Each command lives in its own module, imported only when it runs."""

from __future__ import annotations

import sys

import click

from pyvmm import __version__
from pyvmm.cli import collector
from pyvmm.cli.helpfmt import ReferenceGroup


class LazyGroup(ReferenceGroup):
    """Subcommands are imported on demand: `pyvmm run` must not pay for `probe`'s imports."""

    commands_by_module = {
        "run": ("pyvmm.cli.run", "run"),
        "probe": ("pyvmm.cli.probe", "probe"),
        "ctl": ("pyvmm.cli.ctl", "ctl"),
        "guests": ("pyvmm.cli.guests", "guests"),
        "help": ("pyvmm.cli.help", "help_"),
        "list": ("pyvmm.cli.listing", "list_vms"),
        "bench": ("pyvmm.cli.bench", "bench"),
        "initramfs": ("pyvmm.cli.initramfs", "initramfs"),
        "kvm-unit-tests": ("pyvmm.cli.kvm_unit_tests", "kvm_unit_tests"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands_by_module)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self.commands_by_module.get(name)
        if target is None:
            return None
        import importlib

        module = importlib.import_module(target[0])
        if name != "run":  # run resumes it once its vCPUs run (pyvmm.cli.collector)
            collector.resume()
        return getattr(module, target[1])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="pyvmm")
def cli() -> None:
    """pyvmm: a userspace virtual machine monitor for Linux KVM (arm64 and x86_64)."""


def main(argv: list[str] | None = None) -> None:
    """The console script. Every command closes what it opened before it returns (VmRun.close, context managers;
    nothing is left to atexit), so the interpreter's own teardown of every module (about a fifth of a short run's
    time after the guest's last byte) is skipped once the output is flushed, as a C VMM's exit() would."""
    import os

    from pyvmm.cli.errors import run_cli

    status = run_cli(cli, argv)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`pyvmm list | head`): nothing more can be said
        pass
    os._exit(status)
