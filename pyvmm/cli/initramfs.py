"""`pyvmm initramfs`: write a newc cpio initramfs (optionally gzipped) without root, cpio(1) or fakeroot."""

from __future__ import annotations

import stat
from pathlib import Path

import click


def _split(spec: str, option: str, parts: int, example: str) -> list[str]:
    fields = spec.split(":")
    if len(fields) != parts or not all(fields):
        raise click.BadParameter(f"{spec!r}: use {example}", param_hint=option)
    return fields


@click.command()
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Archive to write (required unless --list).")
@click.option("--add", "adds", multiple=True, metavar="HOST:GUEST",
              help="A host file, symlink or directory tree at GUEST (absolute), permissions kept, owner root.")
@click.option("--dir", "dirs", multiple=True, metavar="GUEST", help="An empty directory (0755).")
@click.option("--symlink", "symlinks", multiple=True, metavar="LINK:TARGET", help="A symbolic link.")
@click.option("--node", "nodes", multiple=True, metavar="PATH:c|b:MAJOR:MINOR",
              help="A device node, e.g. /dev/ttyS0:c:4:64. /dev/console, null, zero, mem and ttyS0 are always there.")
@click.option("--busybox", type=click.Path(path_type=Path, dir_okay=False),
              help="A static busybox for /bin/busybox and /bin/sh (with -- CMD: default the host's, if it suits).")
@click.option("--arch", type=click.Choice(["arm64", "x86_64"]), help="Guest architecture. Default: this host's.")
@click.option("--gzip/--no-gzip", "compress", default=True, show_default=True, help="gzip the archive.")
@click.option("--list", "list_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Instead of writing: list the entries of this archive (newc, plain or gzipped) like `cpio -tv`.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD ARGS...]")
def initramfs(output, adds, dirs, symlinks, nodes, busybox, arch, compress, list_path, command) -> int:
    """Write an initramfs. With `-- CMD ARGS...`: the same image `pyvmm run --kernel Image -- CMD` boots (busybox,
    a generated /init that runs CMD and reports its exit status to pyvmm).

    Example: pyvmm initramfs -o test.cpio.gz --add ./t.sh:/t.sh -- /t.sh --verbose
    """
    from pyvmm.arch import host_arch
    from pyvmm.errors import UsageError
    from pyvmm.initramfs import command as cmd
    from pyvmm.initramfs.cpio import Archive, parse

    if list_path is not None:
        for entry in parse(list_path.read_bytes()):
            kind = stat.filemode(entry.mode)
            extra = f" -> {entry.data.decode(errors='replace')}" if stat.S_ISLNK(entry.mode) else ""
            if stat.S_ISCHR(entry.mode) or stat.S_ISBLK(entry.mode):
                extra = f" ({entry.rdev[0]}, {entry.rdev[1]})"
            click.echo(f"{kind} {entry.uid}/{entry.gid} {len(entry.data):>9} {entry.name}{extra}")
        return 0
    if output is None:
        raise UsageError("pyvmm initramfs: give --output FILE (or --list ARCHIVE)")
    arch = arch or host_arch()
    if command:
        spec = cmd.CommandSpec(command=list(command), busybox=busybox or cmd.find_busybox(arch),
                               adds=[cmd.parse_add(a) for a in adds], exit_mmio=cmd.exit_mmio_for(arch))
        archive = cmd.build(spec, arch)
    else:
        archive = Archive()
        archive.add_standard_devices()
        if busybox is not None:
            archive.add_file("bin/busybox", cmd.check_busybox(busybox, arch), 0o755)
            archive.add_symlink("bin/sh", "busybox")
        budget = cmd.AddBudget(cmd.CommandSpec.size_limit)
        for spec_text in adds:
            cmd.add_host_path(archive, *cmd.parse_add(spec_text), budget)
    for directory in dirs:
        archive.add_dir(directory)
    for spec_text in symlinks:
        link, target = _split(spec_text, "--symlink", 2, "LINK:TARGET")
        archive.add_symlink(link, target)
    for spec_text in nodes:
        path, kind, major, minor = _split(spec_text, "--node", 4, "PATH:c|b:MAJOR:MINOR (e.g. /dev/ttyS0:c:4:64)")
        if not (major.isdigit() and minor.isdigit()):
            raise click.BadParameter(f"{spec_text!r}: MAJOR and MINOR must be numbers", param_hint="--node")
        archive.add_device(path, kind, int(major), int(minor))
    data = archive.to_gzip() if compress else archive.to_bytes()
    try:
        output.write_bytes(data)
    except OSError as err:
        from pyvmm.errors import MissingFileError

        raise MissingFileError(f"cannot write {output}: {err.strerror}") from None
    return 0
