"""`pyvmm help [COMMAND...]`: the help of any command; `--man` the whole reference as pyvmm(1); `--docs` where the
documentation is installed."""

from __future__ import annotations

import click

from pyvmm.errors import UsageError


def docs_dir() -> str:
    """The installed docs (data package pyvmm_docs), or the checkout's docs/ when running from one."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("pyvmm_docs")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "API.md").is_file():
            return str(location)
    return str(Path(__file__).resolve().parents[2] / "docs")


@click.command(name="help")
@click.option("--man", is_flag=True, help="Print the manual page pyvmm(1), generated from these same definitions "
              "(read it with `pyvmm help --man | man -l -`).")
@click.option("--docs", is_flag=True, help="Print where the documentation (API.md, MACHINES.md, ARCHITECTURE.md) is.")
@click.argument("command", nargs=-1, metavar="[COMMAND]...")
@click.pass_context
def help_(ctx: click.Context, command: tuple[str, ...], man: bool, docs: bool) -> int:
    """Show the help of pyvmm or of one of its commands (`pyvmm help run`, `pyvmm help ctl stats`)."""
    root_ctx = ctx.find_root()
    root = root_ctx.command
    if man:
        from pyvmm import __version__
        from pyvmm.cli.manpage import man_page

        click.echo(man_page(root, __version__), nl=False)
        return 0
    if docs:
        click.echo(docs_dir())
        return 0
    target, target_ctx = root, root_ctx
    for name in command:
        sub = target.get_command(target_ctx, name) if isinstance(target, click.Group) else None
        if sub is None:
            raise UsageError(f"no command {' '.join(['pyvmm', *command])!r}: `pyvmm help` lists the commands")
        target, target_ctx = sub, click.Context(sub, parent=target_ctx, info_name=name)
    click.echo(target.get_help(target_ctx))
    return 0
