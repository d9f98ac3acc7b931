"""`pyvmm guests`: the bundled guests `pyvmm run -k NAME` boots, what they do and the arguments they read."""

from __future__ import annotations

import textwrap

import click


@click.command()
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), help="Show this architecture's files (default: the "
              "host's).")
def guests(arch: str | None) -> int:
    """List the bundled guests: boot one with `pyvmm run -k NAME` (a file called NAME in the current directory wins),
    give its arguments with --guest-arg, in order (0 = the default)."""
    import pyvmm_guests

    from pyvmm.arch import host_arch

    arch = arch or host_arch()
    for guest in pyvmm_guests.GUESTS:
        try:
            where = str(pyvmm_guests.path(arch, guest.name))
        except FileNotFoundError:
            where = "not built (make -C guest-kernels)"
        click.echo(guest.name)
        for label, text in (("does", guest.does), ("arguments", guest.arguments), ("file", where)):
            click.echo(textwrap.fill(text, width=100, initial_indent=f"  {label + ':':11}",
                                     subsequent_indent=" " * 13, break_on_hyphens=False))
    click.echo("\nExample: pyvmm run -k exits --guest-arg 1000")
    return 0
